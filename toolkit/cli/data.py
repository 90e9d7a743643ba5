"""`toolkit list` and `toolkit data`: the specs, and where the dataset was found."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from toolkit.cli.options import DataDirOption
from toolkit.cli.output import console, err_console, load_data, print_table


def list_specs(
    family: Annotated[str | None, typer.Option(help="Only the specs of this family (one group).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print every spec as JSON, for scripts.")] = False,
) -> None:
    """List the experiment specs by family: the study's 17 and the new ones, with architecture,
    recipe, parameters and MFLOPs per image (counted from the spec; no TensorFlow)."""
    from toolkit.families import FAMILIES, get_family
    from toolkit.specs import SPECS

    chosen = get_family(family).name if family else None
    specs = [s for s in SPECS.values() if chosen in (None, s.family)]
    if as_json:
        typer.echo(json.dumps([_spec_json(s) for s in specs], indent=2))
        return
    table = Table(title="Experiment specs by family (study: the seed's Tables 2 and 3, OCR readings in "
                        "toolkit/specs/; new: added since)")
    for col in ("spec", "family", "origin", "architecture", "recipe", "epochs", "batch", "params", "MFLOPs",
                "seed test acc"):
        table.add_column(col, overflow="fold")
    for name in FAMILIES:
        group = [s for s in specs if s.family == name]
        if table.rows and group:
            table.add_section()
        for spec in group:
            table.add_row(spec.name, spec.family, spec.origin, spec.describe(), spec.recipe.describe(),
                          str(spec.epochs), str(spec.batch_size), f"{spec.param_count():,}",
                          f"{spec.mflops_per_image():.2f}",
                          f"{spec.reported.test_accuracy:.4f}" if spec.reported else "-")
    console.print(table)


def _spec_json(spec) -> dict[str, Any]:
    return {"name": spec.name, "family": spec.family, "origin": spec.origin,
            "params": spec.param_count(), "mflops_per_image": round(spec.mflops_per_image(), 4),
            "embedding_size": spec.embedding_size(), "architecture": spec.family_entry.summary(spec.arch),
            "recipe": spec.recipe.manifest_fields(),
            "seed_test_accuracy": spec.reported.test_accuracy if spec.reported else None}


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
