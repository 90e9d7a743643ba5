"""`toolkit bench` and `toolkit report`, and their `toolkit run` stages.

Both are thin: the benchmark driver is toolkit.benchmark.driver (shared with `pytest bench/`),
the joining and Pareto logic is toolkit.report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli import RUN_STAGES, ArtifactsOption, ExpsOption, command, console, err_console, print_table

FormatOption = Annotated[
    list[str] | None,
    typer.Option("--format", help="keras, onnx, tflite, a key (onnx-int8) or a glob; repeat. Default: all."),
]
RuntimeOption = Annotated[
    list[str] | None,
    typer.Option("--runtime", help="keras, keras-predict, onnxruntime, onnxruntime-cuda, litert; repeat."),
]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, gpu or all (GPU cases need CUDA).")]
BatchOption = Annotated[list[str] | None, typer.Option("--batch", help="Batch sizes, e.g. 1,256 (default).")]
ThreadsOption = Annotated[
    list[str] | None, typer.Option("--threads", help="Thread counts, e.g. 1,all (default).")
]
SecondsOption = Annotated[float, typer.Option("--seconds", min=0.05, help="Timed seconds per case.")]


@command("bench")
def bench_cmd(
    exp: ExpsOption = None,
    format: FormatOption = None,  # noqa: A002 - the option's public name
    runtime: RuntimeOption = None,
    device: DeviceOption = "all",
    batch: BatchOption = None,
    threads: ThreadsOption = None,
    seconds: SecondsOption = 1.5,
    artifacts: ArtifactsOption = None,
) -> None:
    """Benchmark every export (and model.keras) on each runtime; results go to ARTIFACTS/bench/."""
    run_bench(
        exp=exp,
        formats=format,
        runtime_keys=runtime,
        device=device,
        batch=batch,
        threads=threads,
        seconds=seconds,
        artifacts=artifacts,
    )


def run_bench(
    *,
    exp: list[str] | None,
    formats: list[str] | None = None,
    runtime_keys: list[str] | None = None,
    device: str = "all",
    batch: list[str] | None = None,
    threads: list[str] | None = None,
    seconds: float = 1.5,
    artifacts: Path | None = None,
) -> list[Any]:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from toolkit.benchmark.driver import BenchRequest, BenchSession, run_benchmarks
    from toolkit.errors import PartialFailure

    request = BenchRequest(root=artifacts, exps=exp, formats=formats, runtime_keys=runtime_keys,
                           device=device, batches=batch, threads=threads, seconds=seconds)
    session = BenchSession.open(request)
    console.print(
        f"Benchmarking {len(session.cases)} cases from {session.root} ({seconds:g} s timed per case; Keras "
        "cases run in one subprocess per thread count, since TensorFlow fixes its thread count per process)"
    )
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err_console, transient=True)
    try:
        with progress:
            task = progress.add_task("planning", total=len(session.cases))
            outcomes = run_benchmarks(session, on_start=lambda what: progress.update(task, description=what),
                                      on_done=lambda _: progress.advance(task))
    finally:
        paths = session.close()  # whatever was measured is kept, even after a failure or Ctrl-C
    skipped: dict[str, int] = {}
    for o in outcomes:
        if o.skipped:
            skipped[o.skipped] = skipped.get(o.skipped, 0) + 1
    for reason, count in skipped.items():
        err_console.print(f"[yellow]skipped:[/] {count} cases: {escape(reason)}", soft_wrap=True)
    results = [o.result for o in outcomes if o.result is not None]
    if results:
        _print_results(results, session.peaks or {})
        console.print(f"Results recorded in {paths[0]}; `toolkit report` joins them with accuracy and "
                      "parity.")
    failures = [o for o in outcomes if o.error is not None]
    for o in failures:
        err_console.print(f"[red]failed:[/] {o.case.id}: {escape(o.error.message)}", soft_wrap=True)
    if failures:
        raise PartialFailure(f"{len(failures)} of {len(session.cases)} benchmark cases failed (listed "
                             "above); the others were recorded")
    return results


def _print_results(results: list[Any], peaks: dict[str, Any]) -> None:
    rows = []
    for r in results:
        check, stats, case = r.check, r.stats, r.case
        top1 = f"{check['top1_mismatches']}/{check['top1_compared']} flips" if check["top1_checked"] \
            else "shape+finite"
        device = f"{case.device}-{case.io}" if case.io else case.device
        rows.append([case.spec, case.key, case.runtime, device, case.batch, case.threads,
                     f"{stats.images_per_s:,.0f}", f"{stats.p50_ms:.3f}", f"{stats.p90_ms:.3f}",
                     f"{stats.p99_ms:.3f}", f"{r.pct_of_peak:.1f}" if r.pct_of_peak is not None else "-",
                     stats.rounds, top1])
    print_table(
        "Benchmark (p50/p90/p99 from raw per-call timings; images/s = batch / p50)",
        ["spec", "format", "runtime", "device", "batch", "thr", "img/s", "p50 ms", "p90 ms", "p99 ms",
         "% peak", "rounds", "output check"],
        rows,
    )
    if not peaks:
        return
    fp32 = ", ".join(f"{t} thr {v['gflops']:.0f}" for t, v in peaks["fp32"].items())
    int8 = ", ".join(f"{t} thr {v['gops']:.0f}" for t, v in peaks["int8"].items())
    kernel = next(iter(peaks["fp32"].values()), {}).get("blas_kernel")
    console.print(
        f"Measured peaks: numpy float32 GEMM {fp32} GFLOP/s (OpenBLAS kernel {kernel}); "
        f"ONNX Runtime int8 GEMM {int8} GOP/s. Load average {peaks['load_avg_1m']:.2f}."
    )


@command("report")
def report_cmd(
    max_latency_ms: Annotated[
        float | None, typer.Option("--max-latency-ms", min=0, help="Budget: batch-1 p50 latency (ms).")
    ] = None,
    max_size_mb: Annotated[
        float | None, typer.Option("--max-size-mb", min=0, help="Budget: file size (MB).")
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            "--accuracy-tolerance",
            min=0,
            help="Accuracy gap (0.001 = 0.1 pt) treated as a tie when picking; the faster one wins.",
        ),
    ] = 0.001,
    exp: ExpsOption = None,
    artifacts: ArtifactsOption = None,
) -> None:
    """Join accuracy, parity and benchmarks: ARTIFACTS/report.md, report.csv and PNG plots."""
    make_report(
        exp=exp,
        artifacts=artifacts,
        max_latency_ms=max_latency_ms,
        max_size_mb=max_size_mb,
        tolerance=tolerance,
    )


def make_report(
    *,
    exp: list[str] | None = None,
    artifacts: Path | None = None,
    max_latency_ms: float | None = None,
    max_size_mb: float | None = None,
    tolerance: float = 0.001,
) -> Any:
    from toolkit import report
    from toolkit.artifacts import require_writable, resolve_root

    require_writable(resolve_root(artifacts))  # before the joining work, not after it
    rep = report.build_report(
        artifacts, exps=exp, max_latency_ms=max_latency_ms, max_size_mb=max_size_mb, tolerance=tolerance
    )
    paths = report.write_report(rep)
    _print_report_table(rep)
    console.print(rep.pick_text)
    for note in rep.notes:
        console.print(f"[dim]note:[/] {note}", soft_wrap=True)
    console.print("Wrote " + ", ".join(str(p) for p in paths))
    return rep


def _print_report_table(rep: Any) -> None:
    from rich import box
    from rich.table import Table

    from toolkit import report

    columns, rows = report.table_rows(rep)
    # params and MFLOPs are per spec: stated once below the table to keep it within a terminal.
    drop = {columns.index("params"), columns.index("MFLOPs")}
    table = Table(
        title="Accuracy vs deployment cost (front: L = Pareto accuracy/latency, S = accuracy/size)",
        box=box.SIMPLE_HEAD,
    )
    for i, col in enumerate(columns):
        if i not in drop:
            table.add_column(col, no_wrap=True, justify="left" if i < 4 else "right")
    for row in rows:
        table.add_row(*[v for i, v in enumerate(row) if i not in drop])
    console.print(table)
    for spec in dict.fromkeys(r.spec for r in rep.rows):
        first = next(r for r in rep.rows if r.spec == spec)
        console.print(f"{spec}: {first.params:,} parameters, {first.mflops:.2f} MFLOPs per image")


def _bench_stage(*, exp: str, artifacts: Path | None, **_: Any) -> None:
    run_bench(exp=[exp], artifacts=artifacts)


def _report_stage(*, exp: str, artifacts: Path | None, **_: Any) -> None:
    make_report(artifacts=artifacts)


RUN_STAGES.append(("bench", _bench_stage))
RUN_STAGES.append(("report", _report_stage))
