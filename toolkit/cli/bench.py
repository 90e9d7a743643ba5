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
    EpochsOption,
    ExpOption,
    ExpsOption,
    LimitOption,
    MaxFlashKibOption,
    MaxRamKibOption,
    MixedPrecisionOption,
)
from toolkit.cli.output import console, err_console, load_data, print_table

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
KindOption = Annotated[
    str,
    typer.Option("--kind", help="inference (with memory cases), training (steps), time-to-accuracy (whole "
                                "trainings per seed); comma-separate several."),
]
SeedsOption = Annotated[int, typer.Option("--seeds", min=1, help="time-to-accuracy: seeds 0..N-1 per spec.")]
ThresholdOption = Annotated[
    float | None,
    typer.Option("--threshold", help="time-to-accuracy: the test accuracy the final model must reach, e.g. "
                                     "0.94."),
]
FreshOption = Annotated[
    bool,
    typer.Option("--fresh", help="time-to-accuracy: train again even where the run is complete (re-measure "
                                 "a baseline back to back)."),
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
    kind: KindOption = "inference",
    seeds: SeedsOption = 3,
    threshold: ThresholdOption = None,
    fresh: FreshOption = False,
    mixed_precision: MixedPrecisionOption = None,
    epochs: EpochsOption = None,
    limit_train: LimitOption = None,
    artifacts: ArtifactsOption = None,
) -> None:
    """Benchmark every export (and model.keras) on each runtime; results go to ARTIFACTS/bench/.
    `--kind time-to-accuracy`: train the named specs on several seeds and time them to a threshold."""
    from toolkit.benchmark.driver import BenchRequest, measure

    kinds = tuple(k.strip() for k in kind.split(",") if k.strip())
    request = BenchRequest(root=artifacts, exps=exp, formats=format, runtime_keys=runtime, device=device,
                           batches=batch, threads=threads, seconds=seconds, repeats=repeats,
                           memory=memory and "inference" in kinds, kinds=kinds, seeds=seeds,
                           threshold=threshold, fresh=fresh, mixed_precision=mixed_precision, epochs=epochs,
                           limit_train=limit_train)
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
        results = [r for r in outcome.results if r.case.kind != "time-to-accuracy"]
        timed = [r for r in outcome.results if r.case.kind == "time-to-accuracy"]
        if timed:
            _print_time_to_accuracy(timed)
        if results:
            _print_results(results, outcome.session.peaks or {})
            written = ", ".join(map(str, outcome.written))
            console.print(f"Results recorded in {written}; `toolkit report` joins them with accuracy and "
                          "parity.")
            _print_interval_check(outcome.session.root, results, outcome.written)
        for o in outcome.failures:
            err_console.print(f"[red]failed:[/] {o.case.id}: {escape(o.error.message)}", soft_wrap=True)


def _print_time_to_accuracy(results: list[Any]) -> None:
    from toolkit.benchmark.time_to_accuracy import summarize

    def run_text(r: Any) -> str:
        if r.reused:
            return "reused (its recorded time)"
        return f"trained (load {r.load_avg_1m:.1f})" if r.load_avg_1m is not None else "trained"

    rows = [[r.case.spec, r.seed, r.mixed_precision, f"{r.train_seconds / 60:.2f}", f"{r.test_accuracy:.4f}",
             "-" if r.reached is None else ("yes" if r.reached else "no"), run_text(r)] for r in results]
    print_table("Time to accuracy: training wall time per seed (train_seconds: epochs with validation)",
                ["spec", "seed", "precision", "minutes", "test acc", "reached", "run"], rows)
    for s in summarize(results):
        ci = s.accuracy_interval
        interval = f" ({ci.low:.4f}-{ci.high:.4f})" if ci else ""
        std = f" ± {s.accuracy_std:.4f}" if s.accuracy_std is not None else ""
        reached = f"; {s.reached} of {s.seeds} reached {s.threshold:.4f}" if s.threshold else ""
        console.print(f"{s.spec} ({s.mixed_precision}): {s.minutes_mean:.1f} min (range {s.minutes_low:.1f}-"
                      f"{s.minutes_high:.1f}) over {s.seeds} seeds, test accuracy {s.accuracy_mean:.4f}{std}"
                      f"{interval}{reached}" + (f"; {s.reused} reused runs" if s.reused else ""),
                      soft_wrap=True)


def profile_cmd(
    exp: ExpOption = "frontier",
    limit_train: LimitOption = None,
    mixed_precision: MixedPrecisionOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Where one training epoch of a spec goes: input pipeline (with and without augmentation),
    forward+backward, optimizer, fit, validation, checkpoint, each as wall and CPU seconds."""
    import json

    from toolkit.training.profile import CATEGORIES, profile_epoch
    from toolkit.training.train import TrainRequest

    spec = TrainRequest(exp, limit_train=limit_train, mixed_precision=mixed_precision).spec()
    load_data(None)
    with console.status(f"profiling one epoch of {spec.name} ({spec.mixed_precision})"):
        result = profile_epoch(spec, limit_train=limit_train)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    epoch_cpu = result.seconds["epoch"][1] or 1.0
    rows = [[label, f"{result.seconds[key][0]:.2f}", f"{result.seconds[key][1]:.2f}",
             f"{result.seconds[key][1] / epoch_cpu:.0%}"] for key, label in CATEGORIES]
    print_table(f"One epoch of {spec.name}: {result.images:,} images in {result.steps} steps of "
                f"{result.batch_size}, {spec.mixed_precision}", ["category", "wall s", "CPU s",
                                                                 "CPU / epoch CPU"], rows)
    load = " ".join(f"{v:.1f}" for v in result.load_avg) if result.load_avg else "-"
    console.print(f"CPU s: all threads of this process (2 cores: up to 2x wall). Load average 1/5/15 min: "
                  f"{load}; categories are timed alone, so they do not add up to the epoch.", soft_wrap=True)


def _announce(session: Any, seconds: float) -> None:
    trainings = [c for c in session.cases if c.kind == "time-to-accuracy"]
    if trainings:
        specs = ", ".join(sorted({c.spec for c in trainings}))
        console.print(f"Time to accuracy: {len(trainings)} trainings ({specs} x seeds) in TensorFlow worker "
                      "processes, one after another; a complete run with the same manifest is reused "
                      "(--fresh trains it again)", soft_wrap=True)
        if len(trainings) == len(session.cases):
            return
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
    rep.raise_for_skipped()


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
