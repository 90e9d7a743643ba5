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
        print_status_table(outcome.name, self.root)


def _mb(size: Any) -> str:
    return f"{size / 1e6:.3f}" if isinstance(size, int | float) else "-"


def _kib(size: Any) -> str:
    return f"{size / 1024:,.1f}" if isinstance(size, int | float) else "-"


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def print_status_table(name: str, root) -> None:
    """One row per export of a spec, from exports.json: the status the issue asks for, with which
    checks failed (their full text follows the table, one line per export). A parity result counts
    only for the file it checked (a replaced file shows as stale)."""
    from toolkit.core import artifacts as arts_mod
    from toolkit.core.stats import interval_of_accuracy
    from toolkit.export.record import NOT_RUN, ParitySummary, read_exports

    arts = arts_mod.spec_artifacts(name, root)
    entries = read_exports(arts).exports
    rows, details = [], []
    keras_acc = None
    for e in entries:
        path = arts.dir / e.path
        state = "failed" if not e.exported else e.parity_state(
            arts_mod.sha256_file(path) if path.is_file() else None)
        parity = e.parity if state in ("pass", "fail") and e.parity else ParitySummary(NOT_RUN)
        failures = [e.error or "export failed"] if not e.exported else parity.failures
        if failures:
            details.append(f"  {e.key}: {'; '.join(failures)}")
        delta = parity.accuracy_delta_pp
        rows.append([
            e.key, STATUS_TEXT.get(state, state), _mb(e.size_bytes), _kib(e.arena_bytes),
            _fmt(parity.agreement, ".2%"),
            _fmt(parity.flipped, "d"), _fmt(parity.max_abs_diff, ".2e"), _fmt(parity.p99_abs_diff, ".2e"),
            _accuracy(parity), f"{delta:+.2f}" if delta is not None else "-", _mcnemar(parity),
            ", ".join(dict.fromkeys(_check_name(f) for f in failures)),
        ])
        if keras_acc is None and parity.keras_accuracy is not None and parity.images:
            keras_acc = interval_of_accuracy(parity.keras_accuracy, parity.images)
    title = f"{name}: exports and parity on the 10,000 test images"
    if keras_acc is not None:
        title += f" (Keras accuracy {keras_acc.estimate:.2%}, 95% CI {_ci([keras_acc.low, keras_acc.high])})"
    columns = ["export", "status", "MB", "arena KiB", "top-1 agree", "flipped", "max |d|", "p99 |d|",
               "accuracy ± 95% CI", "d acc pp", "McNemar p (b/c)", "failed check"]
    print_table(title, columns, rows, no_wrap=("export", "status", "accuracy ± 95% CI", "McNemar p (b/c)"))
    console.print("McNemar p: exact two-sided test of the export against Keras on the same images; b = "
                  "images only Keras got right, c = only the export; p >= 0.05: no significant difference "
                  "in accuracy. '-': parity predates the test (rerun toolkit parity).")
    if details:
        console.print("Failed checks, by how much:", soft_wrap=True)
        for line in details:
            console.print(escape(line), soft_wrap=True)


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
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Export trained models to ONNX/TFLite (ARTIFACTS/NAME/export/) and check parity."""
    from toolkit.export.run import ExportRequest, export_and_check

    request = ExportRequest(exps=exps, formats=formats, precisions=precisions, opset=opset, force=force,
                            parity=not no_parity, root=artifacts, data_dir=data_dir)
    export_and_check(request, ExportPrinter(artifacts)).raise_for_failures()


def parity_cmd(
    exps: ExpsOption = None,
    formats: Annotated[
        list[str] | None,
        typer.Option("--format", help="onnx, tflite, an export key (onnx-int8) or all. Default: all."),
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
    model_file: Annotated[Path, typer.Argument(help="model.keras, .onnx or .tflite file.")],
    images: Annotated[list[Path], typer.Argument(help="PNG/JPEG images.")],
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
