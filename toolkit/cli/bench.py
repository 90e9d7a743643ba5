"""`toolkit bench` and `toolkit report`, and how the bench and report stages of `toolkit run` show
(BenchPrinter, print_report). Both commands are thin: the benchmark driver is
toolkit.benchmark.driver (shared with `pytest bench/`), the joining and the rules toolkit.report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from toolkit.benchmark.plan import CLI_REPEATS
from toolkit.cli.options import (
    ArtifactsOption,
    BenchFormatOption,
    BoardOption,
    ExpsOption,
    MaxFlashKibOption,
    MaxRamKibOption,
)
from toolkit.cli.output import console, err_console, print_table

RuntimeOption = Annotated[
    list[str] | None,
    typer.Option("--runtime", help="keras, keras-predict, onnxruntime, onnxruntime-cuda, litert, openvino, "
                                    "openvino-bf16; repeat."),
]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, gpu or all (GPU cases need CUDA).")]
BatchOption = Annotated[list[str] | None, typer.Option("--batch", help="Batch sizes, e.g. 1,256 (default).")]
ThreadsOption = Annotated[
    list[str] | None, typer.Option("--threads", help="Thread counts, e.g. 1,all (default).")
]
SecondsOption = Annotated[float, typer.Option("--seconds", min=0.05, help="Timed seconds per case.")]
RepeatsOption = Annotated[
    int,
    typer.Option("--repeats", min=1, help="Measure each case in this many separate processes (>= 2 gives "
                                          "a 95% interval; 3 by default)."),
]
MemoryOption = Annotated[
    bool,
    typer.Option("--memory/--no-memory", help="Also measure peak memory, load time and first call per "
                                              "runtime x file, each in a fresh process."),
]


def bench_cmd(
    exp: ExpsOption = None,
    format: BenchFormatOption = None,  # noqa: A002 - the option's public name
    runtime: RuntimeOption = None,
    device: DeviceOption = "all",
    batch: BatchOption = None,
    threads: ThreadsOption = None,
    seconds: SecondsOption = 1.5,
    repeats: RepeatsOption = CLI_REPEATS,
    memory: MemoryOption = True,
    artifacts: ArtifactsOption = None,
) -> None:
    """Benchmark every export (and model.keras) on each runtime; results go to ARTIFACTS/bench/."""
    from toolkit.benchmark.driver import BenchRequest, measure

    request = BenchRequest(root=artifacts, exps=exp, formats=format, runtime_keys=runtime, device=device,
                           batches=batch, threads=threads, seconds=seconds, repeats=repeats, memory=memory)
    printer = BenchPrinter()
    outcome = measure(request, printer)
    printer.benchmarked(outcome)
    outcome.raise_for_failures()


class BenchPrinter:
    """The bench stage's view: what is measured, a bar while it runs, then the table."""

    @contextlib.contextmanager
    def measuring(self, session: Any, planned: int) -> Iterator[tuple[Any, Any]]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        _announce(session, session.seconds)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err_console, transient=True) as progress:
            task = progress.add_task("planning", total=planned)
            yield (lambda what: progress.update(task, description=what)), (lambda _: progress.advance(task))

    def benchmarked(self, outcome: Any) -> None:
        for reason, count in outcome.skipped.items():
            err_console.print(f"[yellow]skipped:[/] {count} cases: {escape(reason)}", soft_wrap=True)
        results = outcome.results
        if results:
            _print_results(results, outcome.session.peaks or {})
            written = ", ".join(map(str, outcome.written))
            console.print(f"Results recorded in {written}; `toolkit report` joins them with accuracy and "
                          "parity.")
            _print_interval_check(outcome.session.root, results, outcome.written)
        for o in outcome.failures:
            err_console.print(f"[red]failed:[/] {o.case.id}: {escape(o.error.message)}", soft_wrap=True)


def _announce(session: Any, seconds: float) -> None:
    n_memory = sum(c.kind == "memory" for c in session.cases)
    memory_text = f" and {n_memory} memory cases" if n_memory else ""
    processes = f"{session.repeats} separate process{'es' if session.repeats > 1 else ''}"
    console.print(
        f"Benchmarking {len(session.cases) - n_memory} cases{memory_text} from {session.root}, each in "
        f"{processes} ({seconds:g} s timed per case and process; Keras cases run in one subprocess per "
        "thread count, since TensorFlow fixes its thread count per process; memory cases each in a fresh "
        "process)"
    )


def _print_results(results: list[Any], peaks: dict[str, Any]) -> None:
    from toolkit.report.columns import BENCH_TABLE, columns_for
    from toolkit.report.join import rows_from_results

    rows = rows_from_results(results, peaks)
    columns = columns_for(BENCH_TABLE)
    print_table(
        "Benchmark: one row per file x runtime x device x threads (p50 at batch 1, img/s at the largest "
        "batch: geometric means across processes (95% interval); p50 ≈ #: rows whose p50 intervals overlap; "
        "memory: medians of fresh processes)",
        [c.title for c in columns],
        [[c.text(r, None) for c in columns] for r in rows],
    )
    if not peaks:
        return
    from toolkit.benchmark.peaks import PEAK_KINDS, peak_value

    kernel = next(iter(peaks["fp32"].values()), {}).get("blas_kernel")
    names = {"fp32": f"numpy float32 GEMM (OpenBLAS kernel {kernel})", "int8": "ONNX Runtime int8 GEMM",
             "fp32_ort": "ONNX Runtime float32 MatMul"}
    measured = []
    for kind in (k for k in PEAK_KINDS if peaks.get(k)):
        values = ", ".join(f"{t} thr {peak_value(v):.0f}" for t, v in peaks[kind].items())
        isa = {i for v in peaks[kind].values() for i in v.get("isa", ())}
        unit = "GOP/s" if kind.endswith("int8") else "GFLOP/s"
        kernels = f" ({', '.join(sorted(isa))})" if isa else ""
        measured.append(f"{names.get(kind, kind.replace('-', ' MatMul '))}{kernels} {values} {unit}")
    console.print(f"Measured peaks (each row is judged by its own runtime's): {'; '.join(measured)}. "
                  f"Load average {peaks['load_avg_1m']:.2f}.")


def report_cmd(
    max_latency_ms: Annotated[
        float | None, typer.Option("--max-latency-ms", min=0, help="Budget: batch-1 p50 latency (ms).")
    ] = None,
    max_size_mb: Annotated[
        float | None, typer.Option("--max-size-mb", min=0, help="Budget: file size (MB).")
    ] = None,
    max_memory_mb: Annotated[
        float | None,
        typer.Option("--max-memory-mb", min=0, help="Budget: peak resident memory serving batch 1 (MB)."),
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--accuracy-tolerance",
            min=0,
            help="Override the statistical tie rule: rows within this accuracy gap of the best (0.001 = 0.1 "
                 "pt) count as tied. Default: tied = not significantly less accurate (McNemar p >= 0.05).",
        ),
    ] = None,
    board: BoardOption = None,
    max_flash_kib: MaxFlashKibOption = None,
    max_ram_kib: MaxRamKibOption = None,
    exp: ExpsOption = None,
    artifacts: ArtifactsOption = None,
) -> None:
    """Join accuracy, parity and benchmarks: ARTIFACTS/report.md, report.csv, PNG plots and the pick
    record (pick.json, what `toolkit serve` serves); with --board (or a flash/RAM budget), the
    microcontroller pick among the full-integer files TFLite Micro ran."""
    from toolkit.core.boards import McuBudget
    from toolkit.report.build import make_report

    mcu_budget = McuBudget.of(board, max_flash_kib, max_ram_kib)  # an unknown board: one line, before work
    rep, paths = make_report(artifacts, exps=exp, max_latency_ms=max_latency_ms, max_size_mb=max_size_mb,
                             max_memory_mb=max_memory_mb, tolerance=tolerance, mcu_budget=mcu_budget)
    print_report(rep, paths)


def print_report(rep: Any, paths: list[Path]) -> None:
    _print_report_table(rep)
    console.print(rep.pick_text)
    for note in rep.notes:
        console.print(f"[dim]note:[/] {note}", soft_wrap=True)
    if rep.mcu is not None:
        _print_mcu(rep.mcu)
    console.print("Wrote " + ", ".join(str(p) for p in paths))


def _print_mcu(section: Any) -> None:
    from toolkit.report import mcu

    if section.budget.board is not None:
        console.print(f"Board: {section.budget.board.describe()}", soft_wrap=True)
    if section.rows:
        print_table("Microcontroller rows (full-integer files on TFLite Micro)", mcu.TITLES,
                    mcu.cells(section), no_wrap=("spec", "file"))
        console.print(f"[dim]{mcu.EXPLAINED}[/]", soft_wrap=True)
    console.print(section.pick_text, soft_wrap=True)
    for note in section.notes:
        console.print(f"[dim]note:[/] {note}", soft_wrap=True)


def _print_interval_check(root: Path, results: list[Any], written: list[Path]) -> None:
    """Do this run's p50s fall inside the previous run's 95% intervals? (The check that the
    intervals hold; it needs a previous run with repeats on the same files.)"""
    from toolkit.benchmark.inference_results import check_against_previous

    found = check_against_previous(root, results, written)
    if found is None:
        return
    previous, check = found
    console.print(f"Interval check: {check.inside} of {check.compared} p50s of this run "
                  f"({check.fraction:.0%}) fall inside the 95% intervals of the previous run "
                  f"({previous.path.name if previous.path else 'earlier run'}, written "
                  f"{previous.written_at}).")
    for line in check.outside:
        console.print(f"  outside: {line}", soft_wrap=True)


def _print_report_table(rep: Any) -> None:
    from rich import box
    from rich.table import Table

    from toolkit.report.columns import BASELINE_TITLES, TERMINAL, TERMINAL_COST, baseline_rows, columns_for

    titles = {TERMINAL: "Accuracy (95% Wilson interval; vs best: paired McNemar test against the most "
                        "accurate row within the budget)",
              TERMINAL_COST: "Deployment cost (95% intervals across processes; p50 ≈ #: rows not "
                             "separable in batch-1 p50; front: L latency, S size, M memory, ≈ tied)"}
    for view, title in titles.items():
        table = Table(title=title, box=box.SIMPLE_HEAD)
        columns = columns_for(view)
        for col in columns:
            table.add_column(col.title, no_wrap=True, justify=col.align)
        for row in rep.rows:
            table.add_row(*[col.text(row, rep) for col in columns])
        console.print(table)
    # params and MFLOPs are per spec: stated once below the table to keep it within a terminal.
    for spec in dict.fromkeys(r.spec for r in rep.rows):
        first = next(r for r in rep.rows if r.spec == spec)
        console.print(f"{spec}: {first.params:,} parameters, {first.mflops:.2f} MFLOPs per image")
    if rep.baselines:
        print_table("Memory baselines (peak RSS of the fresh processes before loading the model)",
                    BASELINE_TITLES, baseline_rows(rep))
