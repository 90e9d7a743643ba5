"""Joining: the rows of the report from metrics.json, exports.json/parity.json (with each
file's per-image predictions) and the files under ARTIFACTS/bench/ (inference and memory kinds,
and load tests as served rows). A benchmark result is used only if it measured the file that is
there now (same SHA-256)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.benchmark.inference_results import BenchRun, CaseGroup
from toolkit.benchmark.memory import MemoryResult, read_memory_runs
from toolkit.benchmark.peaks import PEAK_KINDS, pct_of_peak, peak_for, peak_kind, peak_value
from toolkit.benchmark.plan import KERAS_KEY
from toolkit.core import artifacts, stats
from toolkit.core.errors import ArtifactError, NewerRecordError
from toolkit.report.judge import mark_overlaps
from toolkit.report.rows import BENCH, SERVED, MemoryFigures, Row


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
    # The runtime whose parity row this is (None: the file's primary runtime, or Keras), and the
    # precision that runtime computes (None: the file's own).
    runtime: str | None = None
    computes: str | None = None


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


def _latest_memory(root: Path, skipped: list) -> dict[tuple, list[MemoryResult]]:
    """(spec, key, runtime, sha256) -> the memory measurements of the latest run that has them."""
    latest: dict[tuple, list[MemoryResult]] = {}
    for run in read_memory_runs(root, skipped):
        mine: dict[tuple, list[MemoryResult]] = {}
        for r in run.results:
            mine.setdefault((r.case.spec, r.case.key, r.case.runtime, r.case.sha256), []).append(r)
        latest.update(mine)
    return latest


def spec_names(base: Path, exps: Sequence[str] | None) -> list[str]:
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


def _export_predictions(arts, row: str, sha: str | None, parity) -> tuple[np.ndarray | None, str]:
    result = parity.row(row) if parity is not None else None
    if result is None or result.sha256 != sha or not result.predictions:
        return None, (f"no per-image predictions of {arts.name} {row} (parity.json predates them, or "
                      f"checked another file): `toolkit parity --exp {arts.name}` writes them")
    try:
        return artifacts.load_predictions(arts.dir / result.predictions["file"], result.predictions), ""
    except ArtifactError as exc:
        return None, exc.message


def _files(arts: artifacts.SpecArtifacts, keras_accuracy: float | None, notes: list[str],
           metrics: dict[str, Any] | None = None) -> list[_File]:
    """model.keras and every export that is there, each with the parity of that very file."""
    from toolkit.export.parity_record import read_parity
    from toolkit.export.record import read_exports
    from toolkit.export.registry import FORMATS

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
        files += [_runtime_file(arts, entry, files[-1], runtime, parity) for runtime in fmt.runtimes[1:]]
    return files


def _runtime_file(arts: artifacts.SpecArtifacts, entry, primary: _File, runtime: str, parity) -> _File:
    """The file as another runtime than its primary ran it: that runtime's own parity row (its
    accuracy, per-image predictions and the precision it computes), never the primary row's, since
    the runtime may compute at another precision (OpenVINO's bf16 default); "not run" without one."""
    row = entry.runtime_row(runtime)
    state = entry.runtime_state(runtime, primary.sha256) if primary.parity != "stale" else "stale"
    summary = entry.rows.get(row) if row else None
    if summary is None or state not in ("pass", "fail"):
        return replace(primary, parity=state, accuracy=None, images=None, predictions=None, runtime=runtime,
                       predictions_note=f"{arts.name} {primary.key} has no parity row on {runtime} for this "
                                        f"file: `toolkit parity --exp {arts.name}` runs it")
    preds, why = _export_predictions(arts, row, primary.sha256, parity)
    return replace(primary, parity=state, accuracy=summary.test_accuracy, images=summary.images or None,
                   reference_accuracy=summary.keras_accuracy or primary.reference_accuracy,
                   predictions=preds, predictions_note=why, runtime=runtime, computes=summary.computes)


def _file_for(files: Sequence[_File], key: str, runtime: str) -> _File | None:
    """The version of export `key` that `runtime`'s rows use: its own parity row where it has
    one (a runtime other than the file's primary), else the file's primary version."""
    mine = [f for f in files if f.key == key]
    return next((f for f in mine if f.runtime == runtime), next((f for f in mine if f.runtime is None), None))


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
    skipped: list = field(default_factory=list)  # bench files left out (toolkit.core.records.SkippedFile)


def _bench_rows(join: _Join) -> list[Row]:
    rows: list[Row] = []
    for name in join.names:
        spec_rows, stale = _spec_rows(artifacts.spec_artifacts(name, join.base), join)
        rows += spec_rows
        if not spec_rows:
            join.notes.append(f"{name}: no benchmark result measured its current files; it is not in the "
                              f"table. Run `toolkit bench --exp {name}`")
        for key, runtimes in stale.items():  # named one by one: a row never vanishes unexplained
            join.notes.append(
                f"{name} {key} on {', '.join(sorted(runtimes))}: left out, its benchmark results measured "
                f"a file since replaced (different SHA-256); measure the new one: "
                f"toolkit bench --exp {name} --format {key}")
    return rows


def _served_rows(join: _Join) -> list[Row]:
    """One row per endpoint x scenario x batching setting of each spec's current served file,
    from its latest load test (toolkit.loadtest.record). A different measurement from the
    in-process rows (HTTP, client and server on one machine): shown, never on a front or picked."""
    from toolkit.core.loadtest_record import load_results

    latest: dict[tuple, Any] = {}
    for result in load_results(join.base, join.skipped):  # oldest first: later ones replace earlier ones
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
    ident = result.server["classifier"]
    file = _file_for(_files(arts, None, [], None), key, ident.get("runtime", ""))
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
    size = file.size_bytes if file.size_bytes is not None else artifacts.model_bytes(file.path)
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


def _spec_rows(arts: artifacts.SpecArtifacts, join: _Join) -> tuple[list[Row], dict[str, set[str]]]:
    """The rows of one spec, and the runtimes (by export key) whose benchmark results measured a
    file since replaced and were left out."""
    from toolkit.specs import get_spec

    metrics = arts.require_trained()
    spec = get_spec(arts.name)
    rows: list[Row] = []
    stale: dict[str, set[str]] = {}
    files = _files(arts, metrics.get("test_accuracy"), join.notes, metrics)
    for primary in (f for f in files if f.runtime is None):
        mine = [g for ident, g in join.groups.items() if ident[0] == arts.name and ident[1] == primary.key]
        fresh = [g for g in mine if g.case.sha256 == primary.sha256]
        if len(fresh) < len(mine):
            stale[primary.key] = {g.case.runtime for g in mine if g.case.sha256 != primary.sha256}
        by_setting: dict[tuple[str, str], list[CaseGroup]] = {}
        for g in fresh:
            device = f"{g.case.device}-{g.case.io}" if g.case.io else g.case.device
            by_setting.setdefault((g.case.runtime, device), []).append(g)
        for (runtime, device), groups in sorted(by_setting.items()):
            file = _file_for(files, primary.key, runtime) or primary
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
    facts = _run_facts(chosen.values())
    size = file.size_bytes if file.size_bytes is not None else artifacts.model_bytes(file.path)
    row = Row(
        spec=spec.name, key=file.key, format=file.format, precision=file.precision, runtime=runtime,
        device=device, threads=threads, accuracy=file.accuracy, keras_accuracy=file.reference_accuracy,
        parity=file.parity, size_mb=size / 1e6, params=spec.param_count(),
        mflops=spec.mflops_per_image(), images=file.images, predictions=file.predictions,
        predictions_note=file.predictions_note,
        measured_at=max(g.measured_at for g in groups),
        load_avg=max((g.load_avg_1m for g in chosen.values() if g.load_avg_1m is not None), default=None),
        check=_sum_checks([g.check for g in chosen.values()]), sha256=file.sha256, path=str(file.path),
        computes=facts.get("computes") or file.computes or file.precision, isa=facts.get("isa"),
        settings=facts.get("openvino"),
    )
    if b1:
        row.p50_ms, row.p99_ms, row.p50_interval = b1.p50_ms, b1.p99_ms, b1.p50_interval
        row.processes = b1.processes
    if big:
        row.throughput, row.throughput_batch = big.images_per_s, big.case.batch
        row.throughput_interval = big.throughput_interval
        row.processes = row.processes or big.processes
        peak = peak_for({k: {t: {"gflops": v} for t, v in d.items()} for k, d in peaks.items()},
                        file.precision, threads, runtime=runtime, computes=row.computes)
        if peak and device == "cpu":
            row.peak, row.peak_kind = peak, peak_kind(runtime, row.computes)
            row.pct_peak = pct_of_peak(mflops_per_image=row.mflops, images_per_s=row.throughput, peak=peak)
    _attach_memory(row, memory)
    return row


def _run_facts(groups: Iterable[CaseGroup]) -> dict[str, Any]:
    """What the runtime said it ran (computes, isa, its settings), from the latest measurement
    that says so (runtimes that cannot tell say nothing)."""
    results = sorted((r for g in groups for r in g.results), key=lambda r: r.measured_at or "")
    return next((r.notes for r in reversed(results) if r.notes.get("computes")), {})


def rows_from_results(results: Sequence[Any], peaks: dict[str, Any] | None) -> list[Row]:
    """`toolkit bench`'s table: one row per file x runtime x device x thread count of one run
    (its inference results grouped per case, its memory results beside them)."""
    from toolkit.benchmark.inference_results import InferenceResult, group_results
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


def join_rows(base: Path, names: Sequence[str], runs: Sequence[BenchRun],
              skipped: list | None = None) -> tuple[list[Row], dict[str, Any], list[str]]:
    """(rows of every source, numbered; the best measured peaks; notes on what was left out).
    Bench files that cannot be read are added to `skipped` (and left out)."""
    skipped = [] if skipped is None else skipped
    joined = _Join(base, list(names), list(runs), _latest_groups(runs), _latest_memory(base, skipped),
                   _best_peaks(runs), [], skipped)
    rows = [row for source in ROW_SOURCES.values() for row in source(joined)]
    for number, row in enumerate(rows, 1):
        row.number = number
    return rows, joined.peaks, joined.notes
