"""Accuracy against deployment cost, stated with its uncertainty: join metrics.json,
exports.json/parity.json (with each file's per-image predictions) and the benchmark results
under ARTIFACTS/bench/ (inference and memory kinds) into one table; say which differences are
real; mark the fronts; name a pick for a budget.

One row per spec x format x precision x runtime x device. A row states the thread count its
figures were measured at: the count with the lowest batch-1 p50 among those benchmarked, and the
throughput (largest batch) at that same count. A benchmark result is used only if it measured
the file that is there now (same SHA-256).

Which differences are real (toolkit.stats):
- accuracy: each row's 95% Wilson interval on the test images. Two rows on the same images are
  compared by McNemar's exact test on their per-image predictions; where a spec has at least 3
  completed runs of one recipe, two rows of different specs within that seed spread are not
  separable either; rows without per-image predictions fall back to the overlap of their
  intervals (and the report says so);
- latency and throughput: the 95% Student-t interval across the processes that measured a case
  (toolkit bench measures each case in 3); rows whose batch-1 p50 intervals overlap are flagged
  as not separable;
- tie rule: rows not significantly less accurate than the best row are tied with it, and the
  fastest tied row within the budget is the pick (`--accuracy-tolerance` replaces the rule by a
  fixed gap, explicitly);
- fronts (latency, size, memory): row B is dominated only when some row A costs less with
  non-overlapping intervals and B is not significantly more accurate than A; front rows that
  cannot be separated from another front row (cost intervals overlap, accuracy not significantly
  different) are marked tied.

Rows come from ROW_SOURCES: "bench" (measured files) and "loadtest" (served rows: the load
tester's `kind: "loadtest"` files, `source="loadtest"`): served rows are shown with the columns
that apply to them but stay outside the fronts and the pick (`Row.compared`).
"""


from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.benchmark.inference_results import BenchRun, read_runs
from toolkit.benchmark.plan import KERAS_KEY
from toolkit.core import artifacts, stats
from toolkit.core.boards import McuBudget
from toolkit.core.errors import ArtifactError, DataError
from toolkit.core.machine import cpu_count
from toolkit.core.pick_record import SERVING_RUNTIMES, PickedFile, PickRecord, SpecPick, write_picks
from toolkit.core.records import SkippedFile
from toolkit.report import join, mcu
from toolkit.report.columns import to_csv, to_markdown
from toolkit.report.judge import Judge, mark_fronts, mark_overlaps
from toolkit.report.mcu import McuSection
from toolkit.report.pick import Budget, fastest_tied, recommend
from toolkit.report.plots import write_plots
from toolkit.report.rows import MemoryFigures, Report, Row


def _labels(notes: list[str]) -> np.ndarray | None:
    from toolkit.core import data

    try:
        return data.load(allow_download=False).y_test
    except DataError as exc:
        notes.append(f"test labels unavailable ({exc.message.splitlines()[0]}): accuracy differences are "
                     "judged by interval overlap, not by the paired test")
        return None


MIN_SEEDS_FOR_RULE = 3  # a seed spread from fewer runs is shown, not used to tie rows


def _spreads(base: Path, names: Sequence[str], notes: list[str]) -> dict[str, stats.Spread]:
    """spec -> test accuracy across its completed seeds of the current run's recipe (>= 2)."""
    from toolkit.training.summary import seed_spread

    out = {}
    for name in names:
        arts = artifacts.spec_artifacts(name, base)
        spread = seed_spread(arts, arts.require_trained())
        if spread is None or spread.n < 2 or spread.std is None:
            continue
        out[name] = spread
        use = ("a row of another spec within that spread of one of its rows is not separable from it"
               if spread.n >= MIN_SEEDS_FOR_RULE else
               f"shown only: the tie rule uses a seed spread from >= {MIN_SEEDS_FOR_RULE} seeds")
        notes.append(f"{name}: {spread.n} completed seeds of its recipe, test accuracy {spread.mean:.4f} ± "
                     f"{spread.std:.4f} (sample std; range {spread.low:.4f}-{spread.high:.4f}): {use}")
    return out


def build_report(
    root: Path | None = None,
    *,
    exps: Sequence[str] | None = None,
    max_latency_ms: float | None = None,
    max_size_mb: float | None = None,
    max_memory_mb: float | None = None,
    tolerance: float | None = None,
    mcu_budget: McuBudget | None = None,
) -> Report:
    base = artifacts.resolve_root(root)
    names = join.spec_names(base, exps)
    skipped: list[SkippedFile] = []  # bench files that cannot be read: named, left out, exit 7
    runs = read_runs(base, skipped)
    if not runs:
        unread = f"; {len(skipped)} could not be read: {skipped[0].line()}" if skipped else ""
        raise ArtifactError(
            f"no benchmark results under {artifacts.bench_dir(base)}{unread}. "
            "Run `toolkit bench` or `pytest bench/ --benchmark-only` first"
        )
    rows, peaks, notes = join.join_rows(base, names, runs, skipped)
    if not rows:
        raise ArtifactError(
            f"no benchmark result under {artifacts.bench_dir(base)} matches the current models "
            "and exports; run `toolkit bench` (or pytest bench/) again"
        )
    spreads = _spreads(base, names, notes)
    for row in rows:
        row.seeds = spreads.get(row.spec)
    rule_spreads = {} if tolerance is not None else {
        name: s for name, s in spreads.items() if s.n >= MIN_SEEDS_FOR_RULE}
    judge = Judge(labels=_labels(notes), spreads=rule_spreads, tolerance=tolerance)
    mark_overlaps(rows)
    mark_fronts(rows, judge)
    budget = Budget(max_latency_ms, max_size_mb, max_memory_mb)
    pick, best, text = recommend(rows, judge, budget)
    limits = {"max_latency_ms": max_latency_ms, "max_size_mb": max_size_mb, "max_memory_mb": max_memory_mb}
    rep = Report(base, rows, peaks, pick, text, limits, notes, best, _rule_text(tolerance),
                 _baselines(rows))
    rep.skipped_files = skipped
    rep.notes += [f"left out {f.path}: {f.reason}" for f in skipped]
    rep.picks = _picks(rep, judge, budget)
    rep.mcu = _mcu_section(base, names, mcu_budget or McuBudget(), judge)
    rep.notes += _quality_notes(rows) + _load_notes(rows)
    rep.notes.append(_peak_note(peaks, runs))
    return rep


def _mcu_section(base: Path, names: Sequence[str], budget: McuBudget, judge: Judge) -> McuSection | None:
    rows = mcu.mcu_rows(base, names, notes := [])
    if not rows and not budget.stated:
        return None
    section = mcu.build_section(rows, budget, judge)
    section.notes = notes + section.notes
    if not rows:
        section.pick_text = (f"Microcontroller pick: none for the {budget.describe()}: no full-integer "
                             "TFLite file is exported. Export one: toolkit export --precision int8io")
    return section


def make_report(root: Path | None = None, **options: Any) -> tuple[Report, list[Path]]:
    """Build the report (`options`: those of build_report) and write it and its pick record;
    an artifacts root this user cannot write is refused before the joining work."""
    artifacts.require_writable(artifacts.resolve_root(root))
    report = build_report(root, **options)
    return report, write_report(report)


def _rule_text(tolerance: float | None) -> str:
    if tolerance is not None:
        return (f"explicit override --accuracy-tolerance {tolerance:g}: rows within {tolerance * 100:.3g} "
                "points of the best row's accuracy are tied with it (no significance test)")
    return ("rows not significantly less accurate than the best row are tied with it: McNemar's exact test "
            "on the same test images, p >= 0.05 (or, for rows of two specs, a difference within the seed "
            "spread of a spec with >= 3 completed runs of one recipe)")


def _baselines(rows: Sequence[Row]) -> dict[str, dict[str, float | None]]:
    """runtime -> the medians of the two memory baselines over its rows' measurements."""
    by_runtime: dict[str, list[MemoryFigures]] = {}
    for r in rows:
        if r.memory is not None:
            by_runtime.setdefault(r.runtime, []).append(r.memory)
    out = {}
    for runtime, figures in sorted(by_runtime.items()):
        py = [f.baseline_python_mb for f in figures if f.baseline_python_mb is not None]
        rt = [f.baseline_runtime_mb for f in figures if f.baseline_runtime_mb is not None]
        out[runtime] = {"python_numpy_mb": float(np.median(py)) if py else None,
                        "runtime_imported_mb": float(np.median(rt)) if rt else None,
                        "processes": sum(f.processes for f in figures)}
    return out


def _quality_notes(rows: Sequence[Row]) -> list[str]:
    notes = []
    unpaired = sorted({r.predictions_note for r in rows if r.predictions is None and r.predictions_note})
    notes += [f"{n}; until then its rows are compared by the overlap of 95% intervals" for n in unpaired]
    single = [r for r in rows if r.p50_ms is not None and r.p50_interval is None]
    if single:
        notes.append(f"{len(single)} rows were measured in one process only (bench files written before "
                     "repeats existed, or --repeats 1): no latency interval, so their latency comparisons "
                     "use the single p50 and may not hold. Rerun `toolkit bench` (3 processes per case)")
    unmeasured = sorted({r.memory_note for r in rows if r.memory is None and r.memory_note})
    notes += [f"memory columns empty for {sum(r.memory_note == n for r in rows)} rows: {n}"
              for n in unmeasured]
    unavailable = sorted({r.memory_note for r in rows if r.memory is not None and r.memory_note})
    notes += unavailable
    return notes


def _load_notes(rows: Sequence[Row]) -> list[str]:
    notes = []
    loads = [r.load_avg for r in rows if r.load_avg is not None]
    cores = cpu_count()
    if loads and max(loads) > cores * 0.75:
        notes.append(
            f"1-minute load average while these rows were measured: {min(loads):.1f}-{max(loads):.1f} "
            f"on {cores} cores: other work shared the CPU, so timings are noisy (the intervals include "
            "that noise where a case was measured in several processes)"
        )
    over = [r for r in rows if r.pct_peak is not None and r.pct_peak > 100]
    if over:
        notes.append(
            f"{len(over)} rows exceed 100% of the measured peak: the GEMM peak was measured while the CPU "
            "was shared and reads low; rerun `toolkit bench` on a quiet machine to re-measure it"
        )
    return notes


PEAK_NAMES = {"fp32": "float32 numpy/{kernel}", "fp32_ort": "ONNX Runtime MatMul float32",
              "int8": "ONNX Runtime MatMulInteger int8", "openvino-fp32": "OpenVINO MatMul float32",
              "openvino-bf16": "OpenVINO MatMul bf16", "openvino-int8": "OpenVINO MatMul int8"}
PEAK_USERS = {"fp32": "Keras and LiteRT float rows", "fp32_ort": "ONNX Runtime float rows",
              "int8": "ONNX Runtime int8/dynamic rows, and LiteRT int8 rows (no LiteRT GEMM is built)",
              "openvino-fp32": "OpenVINO float32 rows", "openvino-bf16": "OpenVINO bf16 rows",
              "openvino-int8": "OpenVINO int8 rows"}


def _peak_note(peaks: dict[str, dict[str, float]], runs: Sequence[BenchRun]) -> str:
    kernel = None
    for run in reversed(runs):
        for entry in ((run.peaks or {}).get("fp32") or {}).values():
            kernel = kernel or entry.get("blas_kernel")
    measured = []
    for kind, name in PEAK_NAMES.items():
        if peaks.get(kind):
            values = ", ".join(f"{t} thr {v:.0f}" for t, v in sorted(peaks[kind].items()))
            unit = "GOP/s" if kind.endswith("int8") else "GFLOP/s"
            measured.append(f"{name.format(kernel=kernel)} {values} {unit} ({PEAK_USERS[kind]})")
    return (
        "% of peak = MFLOPs/image x images/s against the best measured matrix-multiply peak of the row's own "
        "runtime at the precision it computes, on the row's thread count: " + "; ".join(measured) + ". fp16 "
        "files compute in float32 on this CPU; dynamic quantization runs int8 GEMMs."
    )


def _picks(rep: Report, judge: Judge, budget: Budget) -> PickRecord:
    """What the report picked, as the record `toolkit serve` reads: the report's own pick, and for
    each spec its servable rows tied with that spec's most accurate row (fastest first)."""
    specs = {}
    for name in dict.fromkeys(r.spec for r in rep.rows):
        mine = [r for r in rep.rows if r.spec == name]
        candidates = [_picked(r, rep.root) for r in fastest_tied(mine, judge, budget, keep=_servable)]
        reason = (f"the fastest of {len(candidates)} servable rows tied with {name}'s most accurate row "
                  f"within the {budget.describe()}" if candidates else
                  f"no servable row of {name} is tied with its most accurate row within the "
                  f"{budget.describe()}")
        specs[name] = SpecPick(name, rep.budget, rep.rule, reason, candidates)
    pick = _picked(rep.pick, rep.root) if rep.pick is not None and rep.pick.sha256 else None
    return PickRecord(rep.budget, rep.rule, rep.pick_text, pick, specs)


def _servable(row: Row) -> bool:
    return row.device == "cpu" and row.runtime in SERVING_RUNTIMES.get(row.format, ()) and bool(row.sha256)


def _picked(row: Row, root: Path) -> PickedFile:
    from toolkit.export.registry import row_name

    folder = artifacts.spec_artifacts(row.spec, root).dir
    relative = Path(row.path).resolve().relative_to(folder) if row.path else ""
    computes = row.computes or row.precision
    parity_row = row_name(row.key, row.runtime, computes) if row.key != KERAS_KEY else None
    return PickedFile(spec=row.spec, key=row.key, format=row.format, precision=row.precision,
                      runtime=row.runtime,
                      device=row.device, threads=row.threads, path=str(relative), sha256=row.sha256 or "",
                      accuracy=row.accuracy, p50_ms=row.p50_ms, size_mb=round(row.size_mb, 6),
                      computes=computes, row=parity_row, settings=row.settings)


def write_report(rep: Report) -> list[Path]:
    """report.md, report.csv, the plots and the pick record (pick.json), as one set: everything is
    written into a staging folder first and renamed into place only when all of it was written,
    so a report killed mid-way leaves the previous set, not a mix of two."""
    import shutil

    with artifacts.exclusive_lock(rep.root / ".report.lock", what="the report", wait=True):
        for stale in rep.root.glob(".report-staging-*"):  # a killed report's (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        staging = artifacts.make_private_dir(rep.root, ".report-staging-")
        try:
            written = _write_set(rep, staging)
            for path in written:
                os.replace(path, rep.root / path.name)
            for name in _set_names() - {path.name for path in written}:  # e.g. no memory plot this time
                (rep.root / name).unlink(missing_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [rep.root / path.name for path in written]


def _set_names() -> set[str]:
    from toolkit.report.plots import PLOTS

    return {"report.md", "report.csv", "report-mcu.csv", *(name for name, _ in PLOTS.values())}


def _write_set(rep: Report, folder: Path) -> list[Path]:
    plots = write_plots(rep, folder)
    md, csv_path = folder / "report.md", folder / "report.csv"
    artifacts.write_text(csv_path, to_csv(rep))
    artifacts.write_text(md, to_markdown(rep, plots))
    written = [md, csv_path, *plots]
    if rep.mcu is not None:
        written.append(folder / "report-mcu.csv")
        artifacts.write_text(written[-1], mcu.to_csv(rep.mcu))
    if rep.picks is not None:
        written.append(write_picks(rep.root, rep.picks, folder=folder))
    return written
