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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import artifacts, runtimes, stats
from toolkit.benchmark.memory import MemoryResult, read_memory_runs
from toolkit.benchmark.peaks import PEAK_KINDS, pct_of_peak, peak_for, peak_value
from toolkit.benchmark.plan import KERAS_KEY
from toolkit.benchmark.results import BenchRun, CaseGroup, read_runs
from toolkit.errors import ArtifactError, DataError, NewerRecordError

BENCH = "bench"  # Row.source of measured files; other sources are shown, never compared


@dataclass
class MemoryFigures:
    """A file on a runtime: medians across the fresh processes that measured it."""

    peak_b1_mb: float | None
    peak_batch_mb: float | None
    load_ms: float | None
    first_call_ms: float | None
    cold_start_ms: float | None
    baseline_python_mb: float | None
    baseline_runtime_mb: float | None
    processes: int
    batch: int
    unavailable: str | None = None
    peak_b1_interval: stats.Interval | None = None


@dataclass
class Row:
    spec: str
    key: str
    format: str
    precision: str
    runtime: str
    device: str
    threads: int | None
    accuracy: float | None
    keras_accuracy: float | None
    parity: str
    size_mb: float
    params: int
    mflops: float
    images: int | None = None  # test images the accuracy counts
    p50_ms: float | None = None
    p99_ms: float | None = None
    p50_interval: stats.Interval | None = None
    processes: int = 0  # processes that measured the batch-1 case
    throughput: float | None = None
    throughput_batch: int | None = None
    throughput_interval: stats.Interval | None = None
    pct_peak: float | None = None
    peak: float | None = None
    check: dict[str, Any] | None = None
    memory: MemoryFigures | None = None
    memory_note: str = ""
    measured_at: str | None = None
    load_avg: float | None = None  # highest 1-minute load average among the results used
    source: str = BENCH
    number: int = 0  # 1-based position in the table, for cross references
    predictions: np.ndarray | None = field(default=None, repr=False)
    predictions_note: str = ""  # why there are none
    seeds: stats.Spread | None = None  # test accuracy across the spec's completed seeds (>= 2)
    verdict: Comparison | None = None  # against the best row
    tied: bool = False  # not significantly less accurate than the best row
    fronts: dict[str, str] = field(default_factory=dict)  # cost -> "" | "front" | "tied"
    p50_overlaps: list[int] = field(default_factory=list)  # numbers of rows not separable in p50
    throughput_overlaps: list[int] = field(default_factory=list)  # ... in throughput (same batch)

    @property
    def delta(self) -> float | None:
        if self.accuracy is None or self.keras_accuracy is None:
            return None
        return self.accuracy - self.keras_accuracy

    @property
    def label(self) -> str:
        return f"{self.spec} {self.key} {self.runtime} {self.device}"

    @property
    def compared(self) -> bool:
        """On the fronts and eligible for the pick (served rows are shown only)."""
        return self.source == BENCH

    @property
    def accuracy_interval(self) -> stats.Interval | None:
        if self.accuracy is None or not self.images:
            return None
        return stats.interval_of_accuracy(self.accuracy, self.images)

    @property
    def peak_b1_mb(self) -> float | None:
        return self.memory.peak_b1_mb if self.memory else None


@dataclass(frozen=True)
class Comparison:
    """Row A against row B in accuracy: which is significantly more accurate ("a", "b" or None:
    not separable), the p-value where a paired test ran, and on what basis."""

    better: str | None
    p_value: float | None
    basis: str


@dataclass
class Report:
    root: Path
    rows: list[Row]
    peaks: dict[str, dict[str, float]]
    pick: Row | None
    pick_text: str
    budget: dict[str, float | None]
    notes: list[str] = field(default_factory=list)
    best: Row | None = None
    rule: str = ""  # the tie rule in force, in words
    baselines: dict[str, dict[str, float | None]] = field(default_factory=dict)  # runtime -> figures


# ---------------------------------------------------------------- joining


@dataclass(frozen=True)
class _File:
    """One benchmarked file of a spec, as the report joins it: what it is and what parity says."""

    key: str
    format: str
    precision: str
    path: Path
    sha256: str | None  # of the file there now
    parity: str  # "reference" | "pass" | "fail" | "not run" | "stale"
    accuracy: float | None  # as parity measured it, on this exact file
    reference_accuracy: float | None  # Keras on the same images
    images: int | None = None
    predictions: np.ndarray | None = field(default=None, repr=False, compare=False)
    predictions_note: str = ""
    size_bytes: int | None = None  # None: the file's size on disk now


def _best_peaks(runs: Sequence[BenchRun]) -> dict[str, dict[str, float]]:
    """The highest peak each (precision, threads) reached in any run: a peak is the best the
    machine did, and a peak measured while other work shared the CPU only reads low."""
    return _peak_values([run.peaks for run in runs])


def _peak_values(measured: Sequence[dict[str, Any] | None]) -> dict[str, dict[str, float]]:
    best: dict[str, dict[str, float]] = {kind: {} for kind in PEAK_KINDS}
    for peaks in measured:
        for kind in best:
            for threads, entry in ((peaks or {}).get(kind) or {}).items():
                value = peak_value(entry)
                if value and value > best[kind].get(threads, 0):
                    best[kind][threads] = float(value)
    return best


def _latest_groups(runs: Sequence[BenchRun]) -> dict[tuple, CaseGroup]:
    """Each case's measurements from the latest run that measured it (repeats of one run)."""
    latest: dict[tuple, CaseGroup] = {}
    for run in runs:  # oldest first: later runs replace earlier ones
        for group in run.groups:
            latest[group.case.identity] = group
    return latest


def _latest_memory(root: Path) -> dict[tuple, list[MemoryResult]]:
    """(spec, key, runtime, sha256) -> the memory measurements of the latest run that has them."""
    latest: dict[tuple, list[MemoryResult]] = {}
    for run in read_memory_runs(root):
        mine: dict[tuple, list[MemoryResult]] = {}
        for r in run.results:
            mine.setdefault((r.case.spec, r.case.key, r.case.runtime, r.case.sha256), []).append(r)
        latest.update(mine)
    return latest


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (accuracy, cost) points taken exactly: True where no other point is at least as accurate
    and at most as costly, and strictly better in one of the two. (The report's fronts use
    `mark_fronts`, which asks for separable differences instead.)"""
    flags = []
    for i, (acc, cost) in enumerate(points):
        dominated = any(
            a >= acc and c <= cost and (a > acc or c < cost) for j, (a, c) in enumerate(points) if j != i
        )
        flags.append(not dominated)
    return flags


def _spec_names(base: Path, exps: Sequence[str] | None) -> list[str]:
    from toolkit.specs import match_specs

    names = artifacts.trained_specs(base)
    if exps:
        allowed = {s.name for s in match_specs(list(exps))}
        names = [n for n in names if n in allowed]
    if not names:
        raise ArtifactError(
            f"no trained model under {base}{' for --exp ' + ', '.join(exps) if exps else ''}. "
            "Train one first: toolkit train --exp CNN_1L_Dropout_Exp6"
        )
    return names


def _keras_predictions(arts: artifacts.SpecArtifacts, metrics: dict[str, Any], model_sha: str,
                       parity) -> tuple[np.ndarray | None, str]:
    """The Keras model's per-image top-1: parity's (if it checked this very model.keras), else the
    current run's own file. None with the reason when neither exists (never guessed)."""
    if parity is not None and parity.keras_predictions and parity.source_model_sha256 == model_sha:
        try:
            return artifacts.load_predictions(arts.dir / parity.keras_predictions["file"],
                                              parity.keras_predictions), ""
        except ArtifactError as exc:
            return None, exc.message
    ref = metrics.get("test_predictions")
    if isinstance(ref, dict) and arts.test_predictions.is_file():
        try:
            return artifacts.load_predictions(arts.test_predictions, ref), ""
        except ArtifactError as exc:
            return None, exc.message
    return None, (f"no per-image predictions of {arts.name}'s model.keras (its run predates them and "
                  f"parity has not run since): `toolkit parity --exp {arts.name}` writes them")


def _export_predictions(arts, key: str, sha: str | None, parity) -> tuple[np.ndarray | None, str]:
    result = parity.result(key) if parity is not None else None
    if result is None or result.sha256 != sha or not result.predictions:
        return None, (f"no per-image predictions of {arts.name} {key} (parity.json predates them, or "
                      f"checked another file): `toolkit parity --exp {arts.name}` writes them")
    try:
        return artifacts.load_predictions(arts.dir / result.predictions["file"], result.predictions), ""
    except ArtifactError as exc:
        return None, exc.message


def _files(arts: artifacts.SpecArtifacts, keras_accuracy: float | None, notes: list[str],
           metrics: dict[str, Any] | None = None) -> list[_File]:
    """model.keras and every export that is there, each with the parity of that very file."""
    from toolkit.export.record import read_exports
    from toolkit.export.registry import FORMATS
    from toolkit.parity import read_parity

    metrics = metrics or {}
    try:
        parity = read_parity(arts)
    except NewerRecordError:
        raise
    except ArtifactError as exc:  # exports.json still says pass/fail; only the pairing is lost
        notes.append(f"{exc.message}; per-image predictions of {arts.name} are not used")
        parity = None
    model_sha = artifacts.sha256_file(arts.model)
    preds, why = _keras_predictions(arts, metrics, model_sha, parity)
    files = [_File(KERAS_KEY, "keras", "fp32", arts.model, model_sha, "reference", keras_accuracy,
                   keras_accuracy, metrics.get("test_images"), preds, why)]
    for entry in read_exports(arts).exports:
        fmt = FORMATS.get(entry.key)
        if fmt is None:
            continue
        path = arts.dir / entry.path
        if not entry.exported:
            notes.append(f"{arts.name} {fmt.key}: export failed ({entry.error}); not in the table")
            continue
        if not path.is_file():
            notes.append(f"{arts.name} {fmt.key}: listed in exports.json but {path} is missing")
            continue
        sha = artifacts.sha256_file(path)
        state = entry.parity_state(sha)
        checked = entry.parity if state in ("pass", "fail") else None
        if state == "stale":
            notes.append(f"{arts.name} {fmt.key}: {path.name} changed since parity checked it; its parity "
                         f"and accuracy are unknown until `toolkit parity --exp {arts.name}` reruns")
        # Parity evaluated Keras and the export on the same images in one go: compare those.
        reference = (checked.keras_accuracy if checked else None) or keras_accuracy
        preds, why = _export_predictions(arts, fmt.key, sha, parity) if checked else (None, "")
        files.append(_File(fmt.key, fmt.format, fmt.precision, path, sha, state,
                           checked.test_accuracy if checked else None, reference,
                           (checked.images or None) if checked else None, preds, why))
    return files


def _memory_figures(results: Sequence[MemoryResult]) -> MemoryFigures:
    def median(values: list[float | None]) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    b1 = [r.peak("serving_b1") for r in results]
    return MemoryFigures(
        peak_b1_mb=median(b1), peak_batch_mb=median([r.peak("serving_batch") for r in results]),
        load_ms=median([r.ms.get("load") for r in results]),
        first_call_ms=median([r.ms.get("first_call") for r in results]),
        cold_start_ms=median([r.ms.get("cold_start") for r in results]),
        baseline_python_mb=median([r.peak("python_numpy") for r in results]),
        baseline_runtime_mb=median([r.peak("runtime_imported") for r in results]),
        processes=len(results), batch=results[0].case.batch,
        unavailable=next((r.unavailable for r in results if r.unavailable), None),
        peak_b1_interval=stats.t_interval([v for v in b1 if v is not None]),
    )


@dataclass
class _Join:
    """What every row source reads: the root, the specs, the benchmark files, the notes."""

    base: Path
    names: list[str]
    runs: list[BenchRun]
    groups: dict[tuple, CaseGroup]
    memory: dict[tuple, list[MemoryResult]]
    peaks: dict[str, dict[str, float]]
    notes: list[str]


def _bench_rows(join: _Join) -> list[Row]:
    rows: list[Row] = []
    stale = 0
    for name in join.names:
        spec_rows, spec_stale = _spec_rows(artifacts.spec_artifacts(name, join.base), join)
        rows += spec_rows
        stale += spec_stale
        if not spec_rows:
            join.notes.append(f"{name}: no benchmark result measured its current files; it is not in the "
                              f"table. Run `toolkit bench --exp {name}`")
    if stale:
        join.notes.append(
            f"{stale} benchmark results measured files that have since been replaced "
            "(different SHA-256) and were left out; rerun `toolkit bench` to measure the new ones"
        )
    return rows


SERVED = "loadtest"  # Row.source of `toolkit loadtest` results: shown, never compared


def _served_rows(join: _Join) -> list[Row]:
    """One row per endpoint x scenario x batching setting of each spec's current served file,
    from its latest load test (toolkit.loadtest.record). A different measurement from the
    in-process rows (HTTP, client and server on one machine): shown, never on a front or picked."""
    from toolkit.loadtest.record import load_results

    latest: dict[tuple, Any] = {}
    for result in load_results(join.base):  # oldest first: later results replace earlier ones
        ident = (result.server or {}).get("classifier") or {}
        if ident.get("spec") not in join.names or result.endpoint == "ceiling":
            continue
        batching = (result.server or {}).get("batching") or {}
        key = (ident["spec"], ident.get("key"), result.endpoint, result.scenario, batching.get("max_batch"))
        # A later test without a valid step does not hide an earlier valid one of the same setting.
        if key not in latest or _served_step(result) is not None or _served_step(latest[key]) is None:
            latest[key] = result
    rows = []
    for (name, key, _endpoint, _scenario, max_batch), result in sorted(latest.items(), key=str):
        row = _served_row(join, name, key, result, max_batch)
        if row is not None:
            rows.append(row)
    return rows


def _served_row(join: _Join, name: str, key: str, result: Any, max_batch: int | None) -> Row | None:
    from toolkit.specs import get_spec

    arts = artifacts.spec_artifacts(name, join.base)
    file = next((f for f in _files(arts, None, [], None) if f.key == key), None)
    ident = result.server["classifier"]
    if file is None or file.sha256 != ident.get("sha256"):
        join.notes.append(f"served rows: {Path(result.file).name} measured a {name} {key} file that has "
                          "since been replaced; rerun `toolkit loadtest` against a server of the new file")
        return None
    step = _served_step(result)
    if step is None:
        join.notes.append(f"served rows: {Path(result.file).name} ({name} {key} {result.endpoint} "
                          f"{result.scenario}) has no valid step to show (see `toolkit loadtest` output)")
        return None
    spec = get_spec(name)
    batching = f"batch<={max_batch}" if max_batch and max_batch > 1 else "no batching"
    size = file.size_bytes if file.size_bytes is not None else file.path.stat().st_size
    rate = result.best_rate if result.scenario == "server" else step.achieved_rate
    return Row(spec=name, key=key, format=file.format, precision=file.precision,
               runtime=f"{ident.get('runtime', '?')} http/{result.endpoint}",
               device=f"cpu {result.scenario} {batching}", threads=ident.get("threads"),
               accuracy=file.accuracy, keras_accuracy=file.reference_accuracy, parity=file.parity,
               size_mb=size / 1e6, params=spec.param_count(), mflops=spec.mflops_per_image(),
               images=file.images, p50_ms=step.p50_ms, p99_ms=step.p99_ms, throughput=rate,
               throughput_batch=1, measured_at=result.written_at, source=SERVED)


def _served_step(result: Any) -> Any:
    """The step a served row shows: the server scenario's step at its best passing rate, or the
    one step of single-stream and offline; None when no valid step has figures."""
    valid = [s for s in result.steps if s.valid and s.p50_ms is not None]
    if result.scenario == "server":
        passed = [s for s in valid if s.passed]
        return max(passed, key=lambda s: s.achieved_rate) if passed else None
    return valid[-1] if valid else None


# Where rows come from, by Row.source: measured files, and served rows from load tests.
ROW_SOURCES: dict[str, Callable[[_Join], list[Row]]] = {BENCH: _bench_rows, SERVED: _served_rows}


def _spec_rows(arts: artifacts.SpecArtifacts, join: _Join) -> tuple[list[Row], int]:
    """The rows of one spec and how many benchmark results measured files since replaced."""
    from toolkit.specs import get_spec

    metrics = arts.require_trained()
    spec = get_spec(arts.name)
    rows: list[Row] = []
    stale = 0
    for file in _files(arts, metrics.get("test_accuracy"), join.notes, metrics):
        mine = [g for ident, g in join.groups.items() if ident[0] == arts.name and ident[1] == file.key]
        fresh = [g for g in mine if g.case.sha256 == file.sha256]
        stale += len(mine) - len(fresh)
        by_setting: dict[tuple[str, str], list[CaseGroup]] = {}
        for g in fresh:
            device = f"{g.case.device}-{g.case.io}" if g.case.io else g.case.device
            by_setting.setdefault((g.case.runtime, device), []).append(g)
        for (runtime, device), groups in sorted(by_setting.items()):
            memory = join.memory.get((arts.name, file.key, runtime, file.sha256))
            rows.append(build_row(spec=spec, file=file, runtime=runtime, device=device, groups=groups,
                                  peaks=join.peaks, memory=memory))
    return rows, stale


def build_row(*, spec, file: _File, runtime: str, device: str, groups: Sequence[CaseGroup],
              peaks: dict[str, dict[str, float]], memory: Sequence[MemoryResult] | None = None) -> Row:
    """One row from a file's measured case groups on one runtime and device (all thread counts:
    the one with the lowest batch-1 p50 is used) and its memory measurements."""
    by_threads: dict[int, dict[int, CaseGroup]] = {}
    for g in groups:
        by_threads.setdefault(g.case.threads, {})[g.case.batch] = g
    with_b1 = [t for t, b in by_threads.items() if 1 in b]
    threads = min(with_b1, key=lambda t: by_threads[t][1].p50_ms) if with_b1 else max(by_threads)
    chosen = by_threads[threads]
    b1 = chosen.get(1)
    big = chosen[max(chosen)] if max(chosen) > 1 else None
    size = file.size_bytes if file.size_bytes is not None else file.path.stat().st_size
    row = Row(
        spec=spec.name, key=file.key, format=file.format, precision=file.precision, runtime=runtime,
        device=device, threads=threads, accuracy=file.accuracy, keras_accuracy=file.reference_accuracy,
        parity=file.parity, size_mb=size / 1e6, params=spec.param_count(),
        mflops=spec.mflops_per_image(), images=file.images, predictions=file.predictions,
        predictions_note=file.predictions_note,
        measured_at=max(g.measured_at for g in groups),
        load_avg=max((g.load_avg_1m for g in chosen.values() if g.load_avg_1m is not None), default=None),
        check=_sum_checks([g.check for g in chosen.values()]),
    )
    if b1:
        row.p50_ms, row.p99_ms, row.p50_interval = b1.p50_ms, b1.p99_ms, b1.p50_interval
        row.processes = b1.processes
    if big:
        row.throughput, row.throughput_batch = big.images_per_s, big.case.batch
        row.throughput_interval = big.throughput_interval
        row.processes = row.processes or big.processes
        peak = peak_for({k: {t: {"gflops": v} for t, v in d.items()} for k, d in peaks.items()},
                        file.precision, threads)
        if peak and device == "cpu":
            row.peak = peak
            row.pct_peak = pct_of_peak(mflops_per_image=row.mflops, images_per_s=row.throughput, peak=peak)
    _attach_memory(row, memory)
    return row


def rows_from_results(results: Sequence[Any], peaks: dict[str, Any] | None) -> list[Row]:
    """`toolkit bench`'s table: one row per file x runtime x device x thread count of one run
    (its inference results grouped per case, its memory results beside them)."""
    from toolkit.benchmark.results import InferenceResult, group_results
    from toolkit.specs import get_spec

    best = _peak_values([peaks])
    groups = group_results([r for r in results if isinstance(r, InferenceResult)])
    memory: dict[tuple, list[MemoryResult]] = {}
    for r in results:
        if isinstance(r, MemoryResult):
            memory.setdefault((r.case.spec, r.case.key, r.case.runtime), []).append(r)
    settings: dict[tuple, list[CaseGroup]] = {}
    for g in groups:
        device = f"{g.case.device}-{g.case.io}" if g.case.io else g.case.device
        settings.setdefault((g.case.spec, g.case.key, g.case.runtime, device, g.case.threads), []).append(g)
    rows = []
    for (spec, key, runtime, device, _), members in settings.items():
        case = members[0].case
        file = _File(key, case.format, case.precision, Path(case.path), case.sha256, case.parity, None, None,
                     size_bytes=case.size_bytes)
        mem = memory.pop((spec, key, runtime), None) if device == "cpu" else None
        rows.append(build_row(spec=get_spec(spec), file=file, runtime=runtime, device=device, groups=members,
                              peaks=best, memory=mem))
    for results_left in memory.values():  # memory measured without an inference case beside it
        case = results_left[0].case
        spec = get_spec(case.spec)
        row = Row(spec=case.spec, key=case.key, format=case.format, precision=case.precision,
                  runtime=case.runtime, device="cpu", threads=case.threads, accuracy=None,
                  keras_accuracy=None, parity=case.parity, size_mb=case.size_bytes / 1e6,
                  params=spec.param_count(), mflops=spec.mflops_per_image())
        _attach_memory(row, results_left)
        rows.append(row)
    for number, row in enumerate(rows, 1):
        row.number = number
    mark_overlaps(rows)
    return rows


def _attach_memory(row: Row, memory: Sequence[MemoryResult] | None) -> None:
    if memory:
        row.memory = _memory_figures(memory)
        if row.memory.unavailable:
            row.memory_note = f"memory unavailable: {row.memory.unavailable}"
    elif not row.device.startswith("cpu"):
        row.memory_note = "memory is measured on CPU only (a GPU's memory is not in the resident set)"
    else:
        row.memory_note = ("not measured: no memory results for this file (bench files written before "
                           "memory cases existed, or --no-memory); run `toolkit bench`")


def _sum_checks(checks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    checked = all(c.get("top1_checked") for c in checks)
    return {"top1_checked": checked, "top1_compared": sum(c.get("top1_compared") or 0 for c in checks),
            "top1_mismatches": sum(c.get("top1_mismatches") or 0 for c in checks) if checked else None}


# ---------------------------------------------------------------- what is real


class Judge:
    """Decides which differences between rows are real (the module docstring's rules)."""

    def __init__(self, *, labels: np.ndarray | None, spreads: dict[str, stats.Spread],
                 tolerance: float | None = None) -> None:
        self.labels = labels
        self.spreads = spreads  # spec -> test accuracy across >= 3 seeds of its current recipe
        self.tolerance = tolerance
        self._paired: dict[tuple[int, int], stats.PairedTest] = {}

    def accuracy(self, a: Row, b: Row) -> Comparison:
        if a.accuracy is None or b.accuracy is None:
            return Comparison(None, None, "accuracy unknown")
        if self.tolerance is not None:
            gap = a.accuracy - b.accuracy
            better = None if abs(gap) <= self.tolerance else ("a" if gap > 0 else "b")
            return Comparison(better, None, f"--accuracy-tolerance {self.tolerance:g}")
        spread = self._spread(a, b)
        if spread is not None and abs(a.accuracy - b.accuracy) <= spread:
            return Comparison(None, None, f"within the seed spread (std {spread:.4f})")
        paired = self.paired(a, b)
        if paired is not None:
            if not paired.significant:
                return Comparison(None, paired.p_value, "McNemar")
            return Comparison("a" if paired.only_a > paired.only_b else "b", paired.p_value, "McNemar")
        ia, ib = a.accuracy_interval, b.accuracy_interval
        if ia is None or ib is None or ia.overlaps(ib):
            return Comparison(None, None, "95% intervals overlap (no per-image predictions to pair)")
        return Comparison("a" if a.accuracy > b.accuracy else "b", None, "95% intervals apart (unpaired)")

    def paired(self, a: Row, b: Row) -> stats.PairedTest | None:
        if self.labels is None or a.predictions is None or b.predictions is None:
            return None
        if not len(a.predictions) == len(b.predictions) == len(self.labels):
            return None
        key = (id(a.predictions), id(b.predictions))
        if key not in self._paired:
            self._paired[key] = stats.paired_predictions(a.predictions, b.predictions, self.labels)
        return self._paired[key]

    def _spread(self, a: Row, b: Row) -> float | None:
        """Rows of two specs are two trainings: with >= 3 seeds of a spec's recipe, its seed
        std is the smallest difference that means anything (the larger of the two)."""
        if a.spec == b.spec:
            return None
        stds = [self.spreads[s].std for s in (a.spec, b.spec) if s in self.spreads]
        return max(stds) if stds else None

    @staticmethod
    def cheaper(a: Row, b: Row, cost: str) -> bool:
        """A costs less than B, separably: non-overlapping intervals where both have one; the
        exact values otherwise (size; a single measurement)."""
        ca, cb = cost_of(a, cost), cost_of(b, cost)
        if ca is None or cb is None or ca >= cb:
            return False
        ia, ib = cost_interval(a, cost), cost_interval(b, cost)
        return ia is None or ib is None or not ia.overlaps(ib)


COSTS = ("latency", "size", "memory")


def cost_of(row: Row, cost: str) -> float | None:
    return {"latency": row.p50_ms, "size": row.size_mb, "memory": row.peak_b1_mb}[cost]


def cost_interval(row: Row, cost: str) -> stats.Interval | None:
    if cost == "latency":
        return row.p50_interval
    if cost == "memory" and row.memory is not None:
        return row.memory.peak_b1_interval
    return None


def mark_fronts(rows: Sequence[Row], judge: Judge) -> None:
    """Row.fronts[cost]: "front" when no row costs less separably while B is not significantly
    more accurate than it; "tied" for a front row not separable from another front row."""
    for cost in COSTS:
        pool = [r for r in rows if r.compared and r.accuracy is not None and cost_of(r, cost) is not None]
        front = [b for b in pool if not any(
            a is not b and judge.cheaper(a, b, cost) and judge.accuracy(b, a).better != "a" for a in pool)]
        for b in front:
            tied = any(a is not b and not judge.cheaper(a, b, cost) and not judge.cheaper(b, a, cost)
                       and judge.accuracy(a, b).better is None for a in front)
            b.fronts[cost] = "tied" if tied else "front"


def mark_overlaps(rows: Sequence[Row]) -> None:
    """Row numbers whose 95% intervals overlap each row's: batch-1 p50, and throughput at the same
    batch size (rows that cannot be told apart)."""
    for r in rows:
        if r.p50_interval is not None:
            r.p50_overlaps = [o.number for o in rows if o is not r and o.p50_interval is not None
                              and o.p50_interval.overlaps(r.p50_interval)]
        if r.throughput_interval is not None:
            r.throughput_overlaps = [
                o.number for o in rows if o is not r and o.throughput_interval is not None
                and o.throughput_batch == r.throughput_batch
                and o.throughput_interval.overlaps(r.throughput_interval)]


# ---------------------------------------------------------------- the pick


@dataclass(frozen=True)
class Budget:
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    max_memory_mb: float | None = None

    def fits(self, r: Row) -> bool:
        return ((self.max_latency_ms is None or r.p50_ms <= self.max_latency_ms)
                and (self.max_size_mb is None or r.size_mb <= self.max_size_mb)
                and (self.max_memory_mb is None or (r.peak_b1_mb is not None
                                                    and r.peak_b1_mb <= self.max_memory_mb)))

    @property
    def stated(self) -> bool:
        return any(v is not None for v in (self.max_latency_ms, self.max_size_mb, self.max_memory_mb))

    def describe(self) -> str:
        parts = [(self.max_latency_ms, "p50 batch-1 latency <= {:g} ms"),
                 (self.max_size_mb, "size <= {:g} MB"),
                 (self.max_memory_mb, "batch-1 peak memory <= {:g} MB")]
        stated = ", ".join(text.format(limit) for limit, text in parts if limit is not None)
        return (f"budget ({stated})" if stated else
                "no budget (set one with --max-latency-ms / --max-size-mb / --max-memory-mb)")


def usable(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.compared and r.accuracy is not None and r.p50_ms is not None
            and r.parity in ("pass", "reference") and r.device.startswith(("cpu", "gpu"))]


def recommend(rows: Sequence[Row], judge: Judge,
              budget: Budget = Budget()) -> tuple[Row | None, Row | None, str]:
    """(pick, best, text). The best row is the most accurate usable row within the budget; rows
    not significantly less accurate than it are tied (Row.tied); the fastest tied row (then the
    smallest) is the pick. Every row gets its verdict against the best (Row.verdict)."""
    pool = usable(rows)
    fits = [r for r in pool if budget.fits(r)]
    if not fits:
        return None, None, _no_pick(pool, budget)
    best = max(fits, key=lambda r: (r.accuracy, -r.p50_ms))
    for r in rows:
        if r.accuracy is not None:
            r.verdict = judge.accuracy(best, r) if r is not best else Comparison(None, None, "best")
            r.tied = r.verdict.better is None
    tied = [r for r in fits if r.tied]
    pick = min(tied, key=lambda r: (r.p50_ms, r.size_mb))
    return pick, best, _pick_text(pick, best, tied, budget)


def _no_pick(pool: Sequence[Row], budget: Budget) -> str:
    if not pool:
        return (f"Recommended pick: none ({budget.describe()}): no row has accuracy, latency and passed "
                "parity.")
    fastest = min(pool, key=lambda r: r.p50_ms)
    smallest = min(pool, key=lambda r: r.size_mb)
    text = (f"Recommended pick: none fits the {budget.describe()}. Fastest: {fastest.label} at "
            f"{fastest.p50_ms:.3f} ms; smallest: {smallest.label} at {smallest.size_mb:.3f} MB")
    measured = [r for r in pool if r.peak_b1_mb is not None]
    if measured:
        least = min(measured, key=lambda r: r.peak_b1_mb)
        text += f"; least memory: {least.label} at {least.peak_b1_mb:.0f} MB"
    return text + "."


def _pick_text(pick: Row, best: Row, tied: Sequence[Row], budget: Budget) -> str:
    others = [r for r in tied if r is not pick]
    close = [r for r in others if r.number in pick.p50_overlaps]
    where = (f"within the {budget.describe()}" if budget.stated else
             "(no budget set: --max-latency-ms, --max-size-mb, --max-memory-mb)")
    text = (f"Recommended pick: {pick.label} — the fastest of the {len(tied)} rows tied with the most "
            f"accurate row, {best.label} ({best.accuracy:.4f}), {where}. "
            f"accuracy {pick.accuracy:.4f}, p50 {pick.p50_ms:.3f} ms at batch 1 on {pick.threads} thread(s)")
    if pick.p50_interval is not None:
        text += f" (95% interval {pick.p50_interval.low:.3f}-{pick.p50_interval.high:.3f})"
    text += f", {pick.size_mb:.3f} MB"
    if pick.peak_b1_mb is not None:
        text += f", {pick.peak_b1_mb:.0f} MB peak RSS at batch 1"
    text += f", parity {pick.parity}."
    if close:
        text += (" Not separable from it in batch-1 p50 (95% intervals overlap): "
                 + ", ".join(f"#{r.number} {r.key} {r.runtime}" for r in close) + ".")
    elif pick.p50_interval is None:
        text += " Its latency was measured in one process: no interval, so its lead is not established."
    return text


# ---------------------------------------------------------------- building


def _labels(notes: list[str]) -> np.ndarray | None:
    from toolkit import data

    try:
        return data.load(allow_download=False).y_test
    except DataError as exc:
        notes.append(f"test labels unavailable ({exc.message.splitlines()[0]}): accuracy differences are "
                     "judged by interval overlap, not by the paired test")
        return None


MIN_SEEDS_FOR_RULE = 3  # a seed spread from fewer runs is shown, not used to tie rows


def _spreads(base: Path, names: Sequence[str], notes: list[str]) -> dict[str, stats.Spread]:
    """spec -> test accuracy across its completed seeds of the current run's recipe (>= 2)."""
    from toolkit.train import seed_spread

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
    root: str | Path | None = None,
    *,
    exps: Sequence[str] | None = None,
    max_latency_ms: float | None = None,
    max_size_mb: float | None = None,
    max_memory_mb: float | None = None,
    tolerance: float | None = None,
) -> Report:
    base = artifacts.resolve_root(root)
    names = _spec_names(base, exps)
    runs = read_runs(base)
    if not runs:
        raise ArtifactError(
            f"no benchmark results under {artifacts.bench_dir(base)}. "
            "Run `toolkit bench` or `pytest bench/ --benchmark-only` first"
        )
    join = _Join(base, names, runs, _latest_groups(runs), _latest_memory(base), _best_peaks(runs), [])
    rows = [row for source in ROW_SOURCES.values() for row in source(join)]
    if not rows:
        raise ArtifactError(
            f"no benchmark result under {artifacts.bench_dir(base)} matches the current models "
            "and exports; run `toolkit bench` (or pytest bench/) again"
        )
    for number, row in enumerate(rows, 1):
        row.number = number
    notes = join.notes
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
    rep = Report(base, rows, join.peaks, pick, text, limits, notes, best, _rule_text(tolerance),
                 _baselines(rows))
    rep.notes += _quality_notes(rows) + _load_notes(rows)
    rep.notes.append(_peak_note(join.peaks, runs))
    return rep


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
    cores = runtimes.cpu_count()
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


def _peak_note(peaks: dict[str, dict[str, float]], runs: Sequence[BenchRun]) -> str:
    kernel = None
    for run in reversed(runs):
        for entry in ((run.peaks or {}).get("fp32") or {}).values():
            kernel = kernel or entry.get("blas_kernel")
    fp32 = ", ".join(f"{t} thr {v:.0f}" for t, v in sorted(peaks["fp32"].items()))
    int8 = ", ".join(f"{t} thr {v:.0f}" for t, v in sorted(peaks["int8"].items()))
    ort = ", ".join(f"{t} thr {v:.0f}" for t, v in sorted(peaks["fp32_ort"].items()))
    return (
        f"% of peak = MFLOPs/image x images/s against the best measured GEMM peak for the row's compute "
        f"precision and thread count: float32 numpy/OpenBLAS ({kernel}) {fp32} GFLOP/s "
        f"(ONNX Runtime MatMul: {ort}); int8 ONNX Runtime MatMulInteger {int8} GOP/s. fp16 files compute "
        "in float32 on this CPU; dynamic quantization runs int8 GEMMs."
    )


def write_report(rep: Report) -> list[Path]:
    from toolkit.report_columns import to_csv, to_markdown
    from toolkit.report_plots import write_plots

    plots = write_plots(rep)
    md, csv_path = rep.root / "report.md", rep.root / "report.csv"
    artifacts.write_text(csv_path, to_csv(rep))
    artifacts.write_text(md, to_markdown(rep, plots))
    return [md, csv_path, *plots]
