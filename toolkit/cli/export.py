"""`toolkit export`, `toolkit parity` and `toolkit predict`, and how the export stage of
`toolkit run` shows (ExportPrinter)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from toolkit.cli.options import (
    ArtifactsOption,
    DataDirOption,
    ExportFormatOption,
    ExpsOption,
    PrecisionOption,
)
from toolkit.cli.output import console, counted, err_console, print_table
from toolkit.core.errors import PartialFailure
from toolkit.export.run import SpecOutcome

STATUS_TEXT = {
    "pass": "[green]passed[/]",
    "fail": "[red]exported but parity failed[/]",
    "failed": "[red]export failed[/]",
    "not run": "[yellow]exported (parity not run)[/]",
    "stale": "[yellow]changed since parity checked it[/]",
}


class ExportPrinter:
    """The export stage's view: a bar per spec while it exports and checks, then its status table."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    @contextlib.contextmanager
    def exporting(self, name: str, total: int) -> Iterator[Any]:
        with counted(f"{name}: exporting", total) as hook:
            yield hook

    @contextlib.contextmanager
    def checking(self, name: str, total: int) -> Iterator[Any]:
        with counted(f"{name}: parity", total) as hook:
            def on(event: str, key: str) -> None:
                hook(event, f"{key} on 10,000 test images" if event == "start" else key)

            yield on

    def spec_done(self, outcome: SpecOutcome) -> None:
        if outcome.skipped:
            console.print(f"{outcome.name}: unchanged, skipped (pass --force to redo): "
                          f"{', '.join(outcome.skipped)}")
        if outcome.parity == "not run":
            console.print(f"{outcome.name}: parity not run (--no-parity)")
        for key, why in outcome.failed.items():
            kept = " (the previous file and its record are kept)" if key in outcome.kept else ""
            err_console.print(f"[red]{outcome.name} {key}: export failed{kept}:[/] {escape(why)}",
                              soft_wrap=True)
        for row, why in outcome.skipped_rows.items():
            console.print(f"{outcome.name}: {row} skipped: {why}", soft_wrap=True)
        print_status_table(outcome.name, self.root)


def _mb(size: Any) -> str:
    return f"{size / 1e6:.3f}" if isinstance(size, int | float) else "-"


def _kib(size: Any) -> str:
    return f"{size / 1024:,.1f}" if isinstance(size, int | float) else "-"


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def print_status_table(name: str, root) -> None:
    """One row per parity row of a spec (each export on each runtime that ran it), from
    exports.json: the status, with which checks failed (their full text follows the table, one
    line per row). A parity result counts only for the file it checked (a replaced file shows as
    stale). Full-integer files checked under TFLM get a table of their own: host time is not a
    device's, and the arena is what a firmware reserves."""
    from toolkit.core import artifacts as arts_mod
    from toolkit.core.stats import interval_of_accuracy
    from toolkit.export.record import read_exports

    arts = arts_mod.spec_artifacts(name, root)
    rows, details, micro = [], [], []
    keras_acc = None
    for e in read_exports(arts).exports:
        path = arts.dir / e.path
        file_sha = arts_mod.sha256_file(path) if path.is_file() else None
        if e.exported and e.settings.get("source"):
            rows.append(_derived_row(e))
            continue
        for row, state, parity in _rows_of(e, file_sha):
            failures = [e.error or "export failed"] if not e.exported else parity.failures
            if failures:
                details.append(f"  {row}: {'; '.join(failures)}")
            rows.append(_status_row(e, row, state, parity, failures, file_sha))
            if parity.runtime == "tflm":
                micro.append(_micro_row(e, row, state, parity, file_sha))
            if keras_acc is None and parity.keras_accuracy is not None and parity.images:
                keras_acc = interval_of_accuracy(parity.keras_accuracy, parity.images)
    title = f"{name}: exports and parity on the 10,000 test images"
    if keras_acc is not None:
        title += f" (Keras accuracy {keras_acc.estimate:.2%}, 95% CI {_ci([keras_acc.low, keras_acc.high])})"
    columns = ["export", "runtime", "computes", "status", "MB", "arena KiB", "top-1 agree", "flipped",
               "max |d|", "p99 |d|", "accuracy ± 95% CI", "d acc pp", "McNemar p (b/c)", "failed check"]
    print_table(title, columns, rows, no_wrap=("export", "runtime", "status", "accuracy ± 95% CI",
                                               "McNemar p (b/c)"))
    console.print("McNemar p: exact two-sided test of the export against Keras on the same images; b = "
                  "images only Keras got right, c = only the export; p >= 0.05: no significant difference "
                  "in accuracy. '-': parity predates the test (rerun toolkit parity). computes: the "
                  "precision the runtime computes (read from OpenVINO's compiled model; a float32 file on "
                  "its default runs in bf16 and is judged by the bf16 tolerance). arena KiB: the tensor "
                  "arena TFLM needs (measured under TFLM; '~': the toolkit's estimate).")
    if micro:
        print_table(f"{name}: full-integer files on TFLite Micro (reference kernels, this host)",
                    MICRO_COLUMNS, micro, no_wrap=("export",))
        console.print("host ms/image: TFLM's reference kernels on this x86 host, per image and process: not "
                      "a microcontroller's latency. Arena: bytes TFLM's allocator reported / the smallest "
                      "arena that works (bisection) / what a firmware reserves (minimum + the largest "
                      "CMSIS-NN scratch buffer) / the toolkit's estimate.")
    if details:
        console.print("Failed checks, by how much:", soft_wrap=True)
        for line in details:
            console.print(escape(line), soft_wrap=True)


MICRO_COLUMNS = ["export", "status", "accuracy ± 95% CI", "McNemar p (b/c)", "top-1 differs from primary",
                 "host ms/image", "10k images", "arena reported", "arena min", "firmware", "estimate"]


def _rows_of(entry: Any, file_sha: str | None) -> list[tuple[str, str, Any]]:
    """(row name, state, summary) of each parity row of an export, its primary row first."""
    from toolkit.export.record import NOT_RUN, ParitySummary

    if not entry.exported:
        return [(entry.key, "failed", ParitySummary(NOT_RUN))]
    out = []
    for row, summary in ((entry.key, entry.parity), *entry.rows.items()):
        state = entry.row_state(row, file_sha)
        out.append((row, state, summary if state in ("pass", "fail") and summary else ParitySummary(NOT_RUN)))
    return out


def _status_row(entry: Any, row: str, state: str, parity: Any, failures: list[str],
                file_sha: str | None) -> list[str]:
    delta = parity.accuracy_delta_pp
    runtime = parity.runtime or (entry.runtimes[0] if entry.runtimes else "-")
    return [row, runtime, parity.computes or entry.precision, STATUS_TEXT.get(state, state),
            _mb(entry.size_bytes), _arena_kib(entry, file_sha),
            _fmt(parity.agreement, ".2%"), _fmt(parity.flipped, "d"), _fmt(parity.max_abs_diff, ".2e"),
            _fmt(parity.p99_abs_diff, ".2e"), _accuracy(parity),
            f"{delta:+.2f}" if delta is not None else "-",
            _mcnemar(parity), ", ".join(dict.fromkeys(_check_name(f) for f in failures))]


def _derived_row(entry: Any) -> list[str]:
    """An export made from another export's file (the C source): its parity is that file's."""
    source = entry.settings["source"]["key"]
    arena = entry.facts.get("tensor_arena_size")
    size = sum(f.get("size_bytes") or 0 for f in entry.files) or entry.size_bytes
    return [entry.key, "-", entry.precision, f"[green]exported[/] from {source} (its parity)", _mb(size),
            _kib(arena) + ("" if entry.facts.get("arena_measured") else " ~"), *["-"] * 8]


def _arena_kib(entry: Any, file_sha: str | None) -> str:
    measured = entry.measured_arena(file_sha)
    if measured is not None:
        return _kib(measured["minimum"])
    return f"~{_kib(entry.arena_bytes)}" if entry.arena_bytes is not None else "-"


def _micro_row(entry: Any, row: str, state: str, parity: Any, file_sha: str | None) -> list[str]:
    arena = entry.measured_arena(file_sha) or {}
    differs = parity.differing_from_primary
    return [row, STATUS_TEXT.get(state, state), _accuracy(parity), _mcnemar(parity),
            "-" if differs is None else f"{differs} of {parity.images:,}",
            _fmt(parity.host_ms_per_image, ".2f"), _spread(parity), _bytes(arena.get("reported")),
            _bytes(arena.get("minimum")), _bytes(arena.get("recommended")),
            _bytes(arena.get("estimate", entry.arena_bytes))]


def _spread(parity: Any) -> str:
    """'41 s on 2 processes (88%)': the wall time and how well the processes used the cores."""
    if parity.wall_seconds is None:
        return "-"
    text = f"{parity.wall_seconds:.0f} s"
    if parity.workers:
        text += f" on {parity.workers} process{'es' if parity.workers > 1 else ''}"
    if parity.parallel_efficiency is not None and (parity.workers or 1) > 1:
        text += f" ({parity.parallel_efficiency:.0%})"
    return text


def _bytes(value: Any) -> str:
    return f"{value:,} B" if isinstance(value, int) else "-"


def _check_name(failure: str) -> str:
    """The name of a failed check: the words a failure message starts with ("max abs difference",
    "top-1 agreement", "model.keras changed since this export")."""
    match = re.match(r"[A-Za-z][\w\-./]*(?: [A-Za-z][\w\-./]*)*", failure)
    return match.group(0) if match else failure[:40]


def _ci(bounds: Any) -> str:
    return f"{bounds[0]:.2%}-{bounds[1]:.2%}" if bounds else "-"


def _accuracy(parity: Any) -> str:
    """'92.59% ±0.51' (half the Wilson interval, in points; the bounds are in parity.json)."""
    if parity.test_accuracy is None:
        return "-"
    if not parity.accuracy_ci:
        return f"{parity.test_accuracy:.2%}"
    return f"{parity.test_accuracy:.2%} ±{(parity.accuracy_ci[1] - parity.accuracy_ci[0]) * 50:.2f}"


def _mcnemar(parity: Any) -> str:
    from toolkit.core.stats import fmt_p

    if parity.mcnemar_p is None:
        return "-"
    b, c = parity.discordant or ("?", "?")
    return f"{fmt_p(parity.mcnemar_p)} ({b}/{c})"


def export_cmd(
    exps: ExpsOption = None,
    formats: ExportFormatOption = None,
    precisions: PrecisionOption = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default 17).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-export even if unchanged.")] = False,
    no_parity: Annotated[bool, typer.Option("--no-parity", help="Skip the parity check.")] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Also the flip test-time-augmentation variant of each "
                                                    "chosen export that has one (onnx-tta, tflite-int8-tta: "
                                                    "twice the compute, rows of their own).")] = False,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Export trained models to ONNX/TFLite (ARTIFACTS/NAME/export/) and check parity."""
    from toolkit.export.run import ExportRequest, export_and_check

    request = ExportRequest(exps=exps, formats=formats, precisions=precisions, opset=opset, force=force,
                            parity=not no_parity, root=artifacts, data_dir=data_dir, tta=tta)
    export_and_check(request, ExportPrinter(artifacts)).raise_for_failures()


def parity_cmd(
    exps: ExpsOption = None,
    formats: Annotated[
        list[str] | None,
        typer.Option("--format", help="onnx, tflite, openvino, an export key (onnx-int8) or all. "
                                      "Default: all."),
    ] = None,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Check every export against the Keras model on the full test set; writes parity.json."""
    from toolkit.export.registry import parity_keys
    from toolkit.export.run import check_exports

    check_exports(exps, parity_keys(formats), root=artifacts, data_dir=data_dir,
                  view=ExportPrinter(artifacts)).raise_for_failures()


def predict_cmd(
    model_file: Annotated[Path, typer.Argument(help="model.keras, .onnx, .tflite or OpenVINO .xml file.")],
    images: Annotated[list[Path], typer.Argument(help="Image files: PNG, JPEG, WebP, GIF, BMP or TIFF.")],
    top_k: Annotated[int, typer.Option("--top-k", help="Classes to show per image.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    runtime: Annotated[str | None, typer.Option("--runtime", help="Runtime key (default by suffix).")] = None,
    invert: Annotated[str, typer.Option("--invert", help="auto (light backgrounds), yes or no.")] = "auto",
) -> None:
    """Classify images with an exported model (or model.keras); conversions are stated."""
    from toolkit.runtimes.predict import predict

    outcome = predict(model_file, list(images), top_k=top_k, runtime=runtime, invert=invert)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in outcome.results], indent=2))
    else:
        rows = []
        for r in outcome.results:
            top = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r.top)
            rows.append([r.image, r.top[0]["class"], f"{r.top[0]['probability']:.1%}",
                         top if top_k > 1 else "", "; ".join(r.conversions) or "none (28x28 grayscale)"])
        columns = ["image", "class", "probability", f"top {top_k}" if top_k > 1 else "", "conversion"]
        print_table(f"Predictions of {model_file}", columns, rows)
    for exc in outcome.failed:
        err_console.print(f"[red]failed:[/] {escape(exc.message)}", soft_wrap=True)
    if outcome.failed:
        done = len(outcome.results)
        raise PartialFailure(f"{len(outcome.failed)} of {len(images)} images could not be read (listed "
                             f"above); the other {done} {'was' if done == 1 else 'were'} classified")
