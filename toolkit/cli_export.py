"""`toolkit export`, `toolkit parity` and `toolkit predict`, and the export stage of `toolkit run`."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from toolkit.cli import (
    RUN_STAGES,
    ArtifactsOption,
    DataDirOption,
    ExpsOption,
    command,
    console,
    err_console,
    print_table,
)
from toolkit.errors import ArtifactError, ParityError, PartialFailure, UsageError

FormatOption = Annotated[
    list[str] | None,
    typer.Option("--format", help="onnx, tflite or all (repeat or comma-separate). Default: all."),
]
PrecisionOption = Annotated[
    list[str] | None,
    typer.Option("--precision", help="fp32, fp16, int8, dynamic, int8io (TFLite only: int8 input and "
                                     "output, for microcontrollers) or all. Default: fp32."),
]

STATUS_TEXT = {
    "pass": "[green]passed[/]",
    "fail": "[red]exported but parity failed[/]",
    "failed": "[red]export failed[/]",
    "not run": "[yellow]exported (parity not run)[/]",
    "stale": "[yellow]changed since parity checked it[/]",
}


def _specs(exps: Sequence[str] | None, artifacts) -> list[str]:
    """Named specs (globs allowed), else every trained spec under the root."""
    from toolkit import artifacts as arts_mod
    from toolkit.specs import match_specs

    if exps:
        explicit = {e for e in exps if not any(ch in e for ch in "*?[")}
        trained = set(arts_mod.trained_specs(artifacts))
        # A glob picks the trained specs it matches; a spec named outright must be trained.
        names = [s.name for s in match_specs(list(exps)) if s.name in explicit or s.name in trained]
        if not names:
            root = arts_mod.resolve_root(artifacts)
            raise ArtifactError(f"no trained spec under {root} matches {', '.join(exps)}; "
                                "train one first: toolkit train --exp NAME")
        for name in names:
            arts_mod.spec_artifacts(name, artifacts).require_trained()
        return names
    names = arts_mod.trained_specs(artifacts)
    if not names:
        root = arts_mod.resolve_root(artifacts)
        raise UsageError(f"no trained specs under {root}; train one first (toolkit train --exp NAME) "
                         "or pass --exp")
    return names


def _progress():
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    console=err_console, transient=True)


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
    from toolkit import artifacts as arts_mod
    from toolkit.export.record import NOT_RUN, ParitySummary, read_exports
    from toolkit.stats import interval_of_accuracy

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
    from toolkit.stats import fmt_p

    if parity.mcnemar_p is None:
        return "-"
    b, c = parity.discordant or ("?", "?")
    return f"{fmt_p(parity.mcnemar_p)} ({b}/{c})"


def _verdict(failed_exports: list[str], failed_parity: list[str]) -> None:
    """Exit 5 if any parity check failed (it says which); else 7 if some export failed."""
    if failed_parity:
        extra = f"; export failed: {', '.join(failed_exports)}" if failed_exports else ""
        raise ParityError(f"parity failed for {', '.join(failed_parity)}{extra}. "
                          "See the table above for which check failed by how much")
    if failed_exports:
        raise PartialFailure(f"export failed for {', '.join(failed_exports)}; the other exports "
                             "completed and were checked. Rerun with --verbose, or fix the converter")


def run_export(*, exps: Sequence[str] | None, formats: Sequence[str] | None,
               precisions: Sequence[str] | None, opset: int | None = None, force: bool = False,
               parity: bool = True, artifacts=None, data_dir=None) -> None:
    from toolkit import data
    from toolkit.export import pipeline, registry

    chosen = registry.select(list(formats) if formats else None, list(precisions) if precisions else None)
    names = _specs(exps, artifacts)  # refuses untrained specs before any work
    if opset is not None and any(f.format == "onnx" for f in chosen):
        from toolkit.export.onnx import check_opset

        check_opset(opset)
    dataset = data.load(data_dir)
    failed_exports: list[str] = []
    failed_parity: list[str] = []
    for name in names:
        with _progress() as progress:
            task = progress.add_task(f"{name}: exporting", total=len(chosen))

            def hook(event: str, key: str, _name=name, _task=task) -> None:
                if event == "start":
                    progress.update(_task, description=f"{_name}: exporting {key}")
                else:
                    progress.advance(_task)

            result = pipeline.export_spec(name, chosen, root=artifacts, opset=opset, force=force,
                                          dataset=dataset, hook=hook)
        skipped = [o.key for o in result.outcomes if o.status == "skipped"]
        if skipped:
            console.print(f"{name}: unchanged, skipped (pass --force to redo): {', '.join(skipped)}")
        failed_exports += [f"{name}/{o.key}" for o in result.failed]
        # A skipped export's file is the one its entry names (that is why it was skipped).
        verdict = {o.key: o.entry.parity_state(o.entry.sha256) for o in result.outcomes}
        to_check = [o.key for o in result.outcomes if o.status == "exported"
                    or (o.status == "skipped" and verdict[o.key] != "pass")]
        if parity and to_check:
            outcome = _check(name, to_check, artifacts, dataset)
            failed_parity += [f"{name}/{r.key}" for r in outcome.failed]
        elif not parity:
            console.print(f"{name}: parity not run (--no-parity)")
        print_status_table(name, artifacts)
        if not parity:
            continue
        # Earlier parity failures of skipped exports still count.
        for o in result.outcomes:
            if o.status == "skipped" and o.key not in to_check and verdict[o.key] == "fail":
                failed_parity.append(f"{name}/{o.key}")
    _verdict(failed_exports, failed_parity)


def _check(name: str, keys: list[str] | None, artifacts, dataset):
    from toolkit.parity import check_spec

    with _progress() as progress:
        total = (len(keys) if keys is not None else 0) + 1
        task = progress.add_task(f"{name}: parity", total=total)

        def hook(event: str, key: str) -> None:
            if event == "start":
                progress.update(task, description=f"{name}: parity {key} on 10,000 test images")
            else:
                progress.advance(task)

        return check_spec(name, root=artifacts, keys=keys, dataset=dataset, hook=hook)


@command("export")
def export_cmd(
    exps: ExpsOption = None,
    formats: FormatOption = None,
    precisions: PrecisionOption = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default 17).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-export even if unchanged.")] = False,
    no_parity: Annotated[bool, typer.Option("--no-parity", help="Skip the parity check.")] = False,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Export trained models to ONNX/TFLite (ARTIFACTS/NAME/export/) and check parity."""
    run_export(exps=exps, formats=formats, precisions=precisions, opset=opset, force=force,
               parity=not no_parity, artifacts=artifacts, data_dir=data_dir)


@command("parity")
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
    from toolkit import artifacts as arts_mod
    from toolkit import data
    from toolkit.export.record import read_exports

    keys = _parity_keys(formats)
    names = _specs(exps, artifacts)
    dataset = data.load(data_dir)
    failed_parity: list[str] = []
    failed_exports: list[str] = []
    for name in names:
        entries = read_exports(arts_mod.spec_artifacts(name, artifacts)).exports
        present = [e.key for e in entries if keys is None or e.key in keys]
        outcome = _check(name, present, artifacts, dataset)
        failed_parity += [f"{name}/{r.key}" for r in outcome.failed]
        failed_exports += [f"{name}/{k}" for k in outcome.not_checked]
        print_status_table(name, artifacts)
    _verdict(failed_exports, failed_parity)


def _parity_keys(formats: Sequence[str] | None) -> list[str] | None:
    from toolkit.export.registry import FORMAT_NAMES, FORMATS

    if not formats:
        return None
    keys: list[str] = []
    for raw in formats:
        for value in (v.strip().lower() for v in str(raw).split(",") if v.strip()):
            if value == "all":
                return None
            if value in FORMATS:
                keys.append(value)
            elif value in FORMAT_NAMES:
                keys += [k for k, f in FORMATS.items() if f.format == value]
            else:
                raise UsageError(f"unknown format {value!r}; valid: {', '.join(FORMAT_NAMES)}, "
                                 f"{', '.join(FORMATS)}, all")
    return keys


@command("predict")
def predict_cmd(
    model_file: Annotated[Path, typer.Argument(help="model.keras, .onnx or .tflite file.")],
    images: Annotated[list[Path], typer.Argument(help="PNG/JPEG images.")],
    top_k: Annotated[int, typer.Option("--top-k", help="Classes to show per image.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    runtime: Annotated[str | None, typer.Option("--runtime", help="Runtime key (default by suffix).")] = None,
    invert: Annotated[str, typer.Option("--invert", help="auto (light backgrounds), yes or no.")] = "auto",
) -> None:
    """Classify images with an exported model (or model.keras); conversions are stated."""
    from toolkit.predict import predict

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


def _run_stage(*, exp: str, artifacts=None, data_dir=None) -> None:
    run_export(exps=[exp], formats=["all"], precisions=["all"], artifacts=artifacts, data_dir=data_dir)


RUN_STAGES.append(("export", _run_stage))
