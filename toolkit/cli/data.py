"""`toolkit list` and `toolkit data`: the specs, and where the dataset was found."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from toolkit.cli.options import ArtifactsOption, DataDirOption
from toolkit.cli.output import console, err_console, load_data, print_table


def list_specs(
    family: Annotated[str | None, typer.Option(help="Only the specs of this family (one group).")] = None,
    fits: Annotated[
        str | None,
        typer.Option("--fits", metavar="BOARD",
                     help="Only the specs whose int8 model, estimated from its parameters, fits this board's "
                          "flash (before any training; the arena is measured after export)."),
    ] = None,
    boards: Annotated[bool, typer.Option("--boards",
                                         help="List the boards --fits and --board know.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every spec as JSON, for scripts (with each "
                                                         "trained spec's microcontroller figures).")] = False,
    artifacts: ArtifactsOption = None,
) -> None:
    """List the experiment specs by family: the study's 17, the new ones and the user specs (a spec
    file's), with architecture, recipe, parameters and MFLOPs per image (counted from the spec; no
    TensorFlow)."""
    from toolkit.core.boards import estimated_int8_bytes, get_board
    from toolkit.families import FAMILIES, get_family
    from toolkit.specs import all_specs

    if boards:
        _print_boards(as_json)
        return
    board = get_board(fits) if fits else None
    chosen = get_family(family).name if family else None
    specs = [s for s in all_specs() if chosen in (None, s.family)]
    if board is not None:
        specs = [s for s in specs if estimated_int8_bytes(s.param_count()) <= board.flash_budget_bytes]
    if as_json:
        typer.echo(json.dumps([_spec_json(s, artifacts) for s in specs], indent=2))
        return
    title = ("Experiment specs by family (study: the seed's Tables 2 and 3, OCR readings in toolkit/specs/; "
             "new: added since; user: a spec file's, docs/specs.md)")
    if board is not None:
        title += (f"; only those whose int8 file (about 1 byte per parameter + 40 KiB) fits "
                  f"{board.title}'s {board.flash_budget_bytes / 1024:,.0f} KiB flash budget")
    table = Table(title=title)
    for col in ("spec", "family", "origin", "architecture", "recipe", "epochs", "batch", "params", "MFLOPs",
                "seed test acc"):
        table.add_column(col, overflow="fold")
    for name in FAMILIES:
        group = [s for s in specs if s.family == name]
        if table.rows and group:
            table.add_section()
        for spec in group:
            table.add_row(spec.name, spec.family, origin_of(spec), spec.describe(), spec.recipe.describe(),
                          str(spec.epochs), str(spec.batch_size), f"{spec.param_count():,}",
                          f"{spec.mflops_per_image():.2f}",
                          f"{spec.reported.test_accuracy:.4f}" if spec.reported else "-")
    console.print(table)


def origin_of(spec) -> str:
    """study, new, or user: FILE."""
    return f"user: {spec.source}" if spec.origin == "user" else spec.origin


def _print_boards(as_json: bool) -> None:
    from dataclasses import asdict

    from toolkit.core.boards import by_size

    if as_json:
        typer.echo(json.dumps([{**asdict(b), "flash_budget_bytes": b.flash_budget_bytes,
                                "ram_budget_bytes": b.ram_budget_bytes} for b in by_size()], indent=2))
        return
    rows = [[b.name, b.title, b.mcu, f"{b.flash_kib:,}", f"{b.ram_kib:,}",
             f"{b.headroom_flash_kib} / {b.headroom_ram_kib}",
             f"{b.flash_budget_bytes / 1024:,.0f}", f"{b.ram_budget_bytes / 1024:,.0f}", b.source]
            for b in by_size()]
    print_table("Microcontroller boards (smallest budget first)",
                ["board", "title", "MCU", "flash KiB", "SRAM KiB", "headroom KiB (flash / RAM)",
                 "model budget KiB", "arena budget KiB", "source"], rows, no_wrap=("board",))
    console.print("Headroom: flash for TFLM's interpreter and kernels and the application; RAM for the "
                  "stack, heap, interpreter and application buffers (toolkit/core/boards.py says why).",
                  soft_wrap=True)


def _spec_json(spec, root) -> dict[str, Any]:
    out = {"name": spec.name, "family": spec.family, "origin": spec.origin, "source": spec.source,
           "params": spec.param_count(), "mflops_per_image": round(spec.mflops_per_image(), 4),
           "embedding_size": spec.embedding_size(), "architecture": spec.family_entry.summary(spec.arch),
           "recipe": spec.recipe.manifest_fields(),
           "seed_test_accuracy": spec.reported.test_accuracy if spec.reported else None}
    from toolkit.core.boards import estimated_int8_bytes

    out["int8_bytes_estimate"] = estimated_int8_bytes(spec.param_count())
    microcontroller = _trained_mcu(spec.name, root)
    if microcontroller is not None:
        out["microcontroller"] = microcontroller
    return out


def _trained_mcu(name: str, root) -> list[dict[str, Any]] | None:
    """A trained spec's full-integer files: bytes and the arena, TFLM's measured figure where it ran
    (else the toolkit's estimate, marked as one)."""
    from toolkit.core import artifacts as arts_mod
    from toolkit.export.record import read_exports
    from toolkit.export.registry import FORMATS

    arts = arts_mod.spec_artifacts(name, root)
    if not arts.model.is_file() or not arts.exports_json.is_file():
        return None
    out = []
    for entry in read_exports(arts).exports:
        path = arts.dir / entry.path
        fmt = FORMATS.get(entry.key)
        if fmt is None or "tflm" not in fmt.runtimes or not entry.exported or not path.is_file():
            continue
        measured = entry.measured_arena(arts_mod.sha256_file(path))
        arena = ({"source": "measured by TFLM", **{k: measured[k] for k in
                                                   ("reported", "minimum", "recommended", "estimate")}}
                 if measured else {"source": "estimate (TFLM has not run this file)",
                                   "estimate": entry.arena_bytes})
        out.append({"file": entry.key, "path": str(path), "bytes": path.stat().st_size, "arena_bytes": arena})
    return out or None


def data_info(data_dir: DataDirOption = None) -> None:
    """Show where Fashion-MNIST was found, that it verified, and per-class counts."""
    from toolkit import CLASS_NAMES
    from toolkit.core import data

    dataset = load_data(data_dir)
    for warning in dataset.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"Fashion-MNIST found at [bold]{dataset.source}[/] ({dataset.origin}); "
                  "all four files verified (IDX magic, dimensions, counts, SHA-256).")
    train_counts = data.class_counts(dataset.y_train)
    test_counts = data.class_counts(dataset.y_test)
    rows = [[i, name, train_counts[i], test_counts[i]] for i, name in enumerate(CLASS_NAMES)]
    rows.append(["", "total", sum(train_counts), sum(test_counts)])
    print_table("Images per class", ["label", "class", "train", "test"], rows)
