"""`toolkit bench` and `toolkit report`, and their `toolkit run` stages.

Both are thin: the timing engine is toolkit.benchmark (shared with `pytest bench/`), the joining
and Pareto logic is toolkit.report.
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
) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from toolkit import benchmark as engine
    from toolkit import runtimes
    from toolkit.artifacts import resolve_root
    from toolkit.errors import ArtifactError, DeviceUnavailableError, PartialFailure, ToolkitError

    root = resolve_root(artifacts)
    devices = engine.parse_devices(device)
    thread_counts = engine.parse_threads(threads)
    cases = engine.plan_cases(
        root,
        exps=exp,
        formats=formats,
        runtime_keys=runtime_keys,
        devices=devices,
        batches=engine.parse_batches(batch),
        threads=thread_counts,
    )
    if not cases:
        raise ArtifactError(
            f"nothing to benchmark under {root} for these filters: train and export first "
            "(toolkit train, toolkit export), or widen --exp/--format/--runtime"
        )
    cuda = runtimes.RUNTIMES["onnxruntime-cuda"].available()
    gpu_cases = [c for c in cases if c.device == "gpu"]
    if gpu_cases and not cuda:
        if device == "gpu":
            import onnxruntime as ort

            raise DeviceUnavailableError(
                f"--device gpu: ONNX Runtime has no CUDA provider here (providers: "
                f"{', '.join(ort.get_available_providers())}); install the `gpu` extra on an NVIDIA host"
            )
        err_console.print(f"[yellow]skipped:[/] {len(gpu_cases)} GPU cases (no CUDA execution provider here)")
        cases = [c for c in cases if c.device != "gpu"]
    keras_cases = [c for c in cases if c.runtime in engine.KERAS_RUNTIMES]
    if keras_cases and not engine.tensorflow_available():
        err_console.print(f"[yellow]skipped:[/] {len(keras_cases)} Keras cases (TensorFlow is not installed)")
        cases = [c for c in cases if c.runtime not in engine.KERAS_RUNTIMES]
        keras_cases = []
    local = [c for c in cases if c.runtime not in engine.KERAS_RUNTIMES]

    results: list[dict[str, Any]] = []
    failures: list[str] = []
    console.print(
        f"Benchmarking {len(cases)} cases from {root} ({seconds:g} s timed per case; Keras cases run "
        "in one subprocess per thread count, since TensorFlow fixes its thread count per process)"
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("measuring matmul peaks", total=len(cases))
        peaks = engine.measure_peaks(thread_counts)

        def record(item: dict[str, Any]) -> None:
            if "error" in item:
                failures.append(f"{item['id']}: {item['error']}")
            else:
                _add_peak(item, peaks)
                results.append(item)
            progress.advance(task)

        ctx = engine.BenchContext.create(root, seconds=seconds)
        for case in local:
            progress.update(task, description=case.id)
            try:
                record(engine.run_case(case, ctx, cases=cases))
            except ToolkitError as exc:
                record({"id": case.id, "error": exc.message})
        for n_threads in sorted({c.threads for c in keras_cases}):
            group = [c for c in keras_cases if c.threads == n_threads]
            progress.update(task, description=f"Keras cases, TensorFlow at {n_threads} threads (subprocess)")
            engine.run_in_worker(group, root=root, seconds=seconds, on_result=record)
    if results:
        path = engine.write_run(root, source="cli", results=results, peaks=peaks)
        _print_results(results, peaks)
        console.print(f"Results recorded in {path}; `toolkit report` joins them with accuracy and parity.")
    for line in failures:
        err_console.print(f"[red]failed:[/] {line}", soft_wrap=True)
    if failures:
        raise PartialFailure(
            f"{len(failures)} of {len(cases)} benchmark cases failed (listed above); the others were recorded"
        )
    return results


def _add_peak(result: dict[str, Any], peaks: dict[str, Any]) -> None:
    from toolkit import benchmark as engine

    peak = engine.peak_for(peaks, result["precision"], result["threads"])
    if peak and result.get("images_per_s"):
        result["peak_g_per_s"] = peak
        result["pct_of_peak"] = 100 * result["mflops_per_image"] * result["images_per_s"] / (peak * 1e3)


def _print_results(results: list[dict[str, Any]], peaks: dict[str, Any]) -> None:
    rows = []
    for r in results:
        check = r["check"]
        top1 = (
            f"{check['top1_mismatches']}/{check['top1_compared']} flips"
            if check["top1_checked"]
            else "shape+finite"
        )
        device = f"{r['device']}-{r['io']}" if r.get("io") else r["device"]
        rows.append(
            [
                r["spec"],
                r["key"],
                r["runtime"],
                device,
                r["batch"],
                r["threads"],
                f"{r['images_per_s']:,.0f}",
                f"{r['p50_ms']:.3f}",
                f"{r['p90_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                f"{r['pct_of_peak']:.1f}" if r.get("pct_of_peak") is not None else "-",
                r["rounds"],
                top1,
            ]
        )
    print_table(
        "Benchmark (p50/p90/p99 from raw per-call timings; images/s = batch / p50)",
        [
            "spec",
            "format",
            "runtime",
            "device",
            "batch",
            "thr",
            "img/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "% peak",
            "rounds",
            "output check",
        ],
        rows,
    )
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
