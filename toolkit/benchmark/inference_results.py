"""The inference kind's results file under ARTIFACTS/bench/: one typed record, one writer, one reader,
in the bench envelope of toolkit.core.records.

    {"schema_version": 2, "kind": "inference", "source": "cli" | "pytest", "written_at": ...,
     "machine": {...}, "versions": {...}, "peaks": {...}, "results": [InferenceResult, ...]}

This module owns "inference" (one file per `toolkit bench` or `pytest bench/` run); the envelope's
reader hands it the files of that kind only. A file without `kind` is an inference file (what the
toolkit wrote before kinds existed), and a file without `schema_version` is version 1; a newer
version is refused (upgrade the toolkit).

Versions of the inference kind: 2 adds `kind` and `schema_version`, and each case's `sha256` is
the file measured (not the one exports.json names); 1 is read as it is. Added since without a
version bump (older readers ignore them): `repeat` (which of a case's measurements, each in
another process) and `pid` (the process that measured it). Results of one case are grouped by
`group_results` (CaseGroup: the interval across processes); a file without repeats gives
groups of one measurement, which have no interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.benchmark.plan import INFERENCE, BenchCase
from toolkit.benchmark.timing import STATS, TimingStats
from toolkit.core import records
from toolkit.core.stats import Interval, t_interval

SCHEMA_VERSION = 2
WHAT = "benchmark results"
FIX = "Delete it and rerun `toolkit bench`"
# Result fields besides the case, the stats and `notes` (whatever the runtime adds: provider, gpu...).
_FIELDS = ("id", "timed", "warmup_calls", "params", "mflops_per_image", "inputs", "reference", "check",
           "versions", "measured_at", "tf_threads", "load_avg_1m", "peak_g_per_s", "pct_of_peak", "pid")


@dataclass
class InferenceResult:
    """One measured case. Written flat (the case's fields, then these, then the stats)."""

    case: BenchCase
    timed: bool
    check: dict[str, Any]
    params: int
    mflops_per_image: float
    measured_at: str | None = None
    stats: TimingStats | None = None  # None when timing was disabled (still run and checked)
    warmup_calls: int = 0
    inputs: str | None = None
    reference: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    tf_threads: int | None = None
    load_avg_1m: float | None = None
    peak_g_per_s: float | None = None
    pct_of_peak: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # provider, GPU facts
    pid: int | None = None  # the process that measured it (None in older files)

    @property
    def id(self) -> str:
        return self.case.id

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.case.to_dict(), "id": self.id, "timed": self.timed, "warmup_calls": self.warmup_calls,
            "params": self.params, "mflops_per_image": self.mflops_per_image, "inputs": self.inputs,
            "reference": self.reference, "check": self.check, "versions": self.versions,
            "measured_at": self.measured_at, "tf_threads": self.tf_threads, "load_avg_1m": self.load_avg_1m,
            "pid": self.pid, **self.notes,
        }
        if self.stats is not None:
            out.update({name: getattr(self.stats, name) for name in STATS})
        if self.peak_g_per_s is not None:
            out.update(peak_g_per_s=self.peak_g_per_s, pct_of_peak=self.pct_of_peak)
        return out

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path) -> InferenceResult:
        entry = records.Entry(doc, path=path, what=f"{WHAT} entry", fix=FIX)
        req, opt = entry.req, entry.opt
        number = (int, float)
        stats = TimingStats.from_doc(doc, path=path, what=f"{WHAT} entry")
        timed = stats is not None
        case = BenchCase.from_dict(doc, path=path)
        known = {*case.to_dict(), *_FIELDS, *STATS}
        return cls(
            case=case, timed=timed, stats=stats, check=req("check", dict), params=req("params", int),
            mflops_per_image=req("mflops_per_image", number), measured_at=opt("measured_at", str),
            warmup_calls=opt("warmup_calls", int, 0), inputs=opt("inputs", str),
            reference=opt("reference", str),
            versions=opt("versions", dict, {}), tf_threads=opt("tf_threads", int),
            load_avg_1m=opt("load_avg_1m", number), peak_g_per_s=opt("peak_g_per_s", number),
            pct_of_peak=opt("pct_of_peak", number), pid=opt("pid", int),
            notes={k: v for k, v in doc.items() if k not in known},
        )


@dataclass
class CaseGroup:
    """The timed measurements of one case (its repeats, one per process): what tables and the
    report show. Estimates are geometric means across processes and intervals 95% Student-t
    intervals on the log scale (toolkit.stats.t_interval(log=True)): timings are positive and a
    shared CPU slows them by factors. None with a single measurement."""

    results: list[InferenceResult]

    @property
    def case(self) -> BenchCase:
        return replace(self.results[0].case, repeat=0)

    @property
    def processes(self) -> int:
        pids = {r.pid for r in self.results if r.pid is not None}
        return len(pids) + sum(r.pid is None for r in self.results)

    def _mean(self, name: str) -> float:
        values = np.asarray([getattr(r.stats, name) for r in self.results], dtype=np.float64)
        return float(np.exp(np.mean(np.log(values)))) if np.all(values > 0) else float(values.mean())

    @property
    def p50_ms(self) -> float:
        return self._mean("p50_ms")

    @property
    def p99_ms(self) -> float:
        return self._mean("p99_ms")

    @property
    def images_per_s(self) -> float:
        return self._mean("images_per_s")

    @property
    def p50_interval(self) -> Interval | None:
        return t_interval([r.stats.p50_ms for r in self.results], log=True)

    @property
    def throughput_interval(self) -> Interval | None:
        return t_interval([r.stats.images_per_s for r in self.results], log=True)

    @property
    def rounds(self) -> int:
        return sum(r.stats.rounds for r in self.results)

    @property
    def pct_of_peak(self) -> float | None:
        values = [r.pct_of_peak for r in self.results if r.pct_of_peak is not None]
        return float(np.mean(values)) if values else None

    @property
    def load_avg_1m(self) -> float | None:
        return max((r.load_avg_1m for r in self.results if r.load_avg_1m is not None), default=None)

    @property
    def measured_at(self) -> str:
        return max(r.measured_at or "" for r in self.results)

    @property
    def check(self) -> dict[str, Any]:
        """The output checks of every measurement, summed."""
        checked = all(r.check.get("top1_checked") for r in self.results)
        return {"top1_checked": checked,
                "top1_compared": sum(r.check.get("top1_compared") or 0 for r in self.results),
                "top1_mismatches": sum(r.check.get("top1_mismatches") or 0 for r in self.results)
                if checked else None,
                "calls_checked": sum(r.check.get("calls_checked") or 0 for r in self.results)}


def group_results(results: list[InferenceResult]) -> list[CaseGroup]:
    """Timed results grouped per case (identity), in first-seen order."""
    groups: dict[tuple, list[InferenceResult]] = {}
    for r in results:
        if r.stats is not None:
            groups.setdefault(r.case.identity, []).append(r)
    return [CaseGroup(sorted(members, key=lambda r: r.case.repeat)) for members in groups.values()]


@dataclass(frozen=True)
class IntervalCheck:
    """How many of a run's p50s fall inside an earlier run's 95% intervals (same case, same file)."""

    inside: int
    compared: int
    outside: list[str]  # ids of the cases outside
    previous: Path | None

    @property
    def fraction(self) -> float | None:
        return self.inside / self.compared if self.compared else None


def previous_run(runs: list[BenchRun], latest: list[CaseGroup], *,
                 exclude: Sequence[Path] = ()) -> BenchRun | None:
    """The most recent run (not one of `exclude`: the files just written) with a p50 interval for a
    case of `latest` measured on the same file: what a new run's p50s are checked against."""
    wanted = {(g.case.identity, g.case.sha256) for g in latest}
    for run in reversed(runs):
        if run.path in exclude:
            continue
        if any(g.p50_interval is not None and (g.case.identity, g.case.sha256) in wanted for g in run.groups):
            return run
    return None


def interval_check(previous: BenchRun, latest: list[CaseGroup]) -> IntervalCheck:
    """Each case of `latest` against the same case (same file sha256) of `previous`: is its p50
    (mean across processes) inside the previous run's 95% interval of the p50?"""
    before = {(g.case.identity, g.case.sha256): g for g in previous.groups}
    inside, outside = 0, []
    for group in latest:
        earlier = before.get((group.case.identity, group.case.sha256))
        interval = earlier.p50_interval if earlier else None
        if interval is None:
            continue
        if interval.contains(group.p50_ms):
            inside += 1
        else:
            outside.append(f"{group.case.id}: {group.p50_ms:.3f} ms outside [{interval.low:.3f}, "
                           f"{interval.high:.3f}]")
    return IntervalCheck(inside, inside + len(outside), outside, previous.path)


@dataclass
class BenchRun:
    """One inference results file."""

    source: str  # "cli" | "pytest"
    results: list[InferenceResult]
    peaks: dict[str, Any] | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    written_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. fallback_dir of a fresh-clone pytest run
    path: Path | None = None  # where it was read from

    @property
    def groups(self) -> list[CaseGroup]:
        return group_results(self.results)


def write_run(root: Path | None, run: BenchRun) -> Path:
    """One file per run under ROOT/bench/ (atomic, the bench envelope), read by `toolkit report`."""
    body = {"peaks": run.peaks, **run.extra, "results": [r.to_dict() for r in run.results]}
    return records.write_bench_file(root, kind=INFERENCE, schema_version=SCHEMA_VERSION, source=run.source,
                                    body=body, machine=run.machine or None, versions=run.versions or None)


def read_runs(root: Path | None, skipped: list[records.SkippedFile] | None = None) -> list[BenchRun]:
    """Every inference run under ROOT/bench/, oldest first. Files of other kinds are skipped; a
    corrupt file, a newer schema or a missing field is an ArtifactError naming the file (with
    `skipped`: noted there, and the other files read)."""
    runs = []
    for file, results in records.read_result_files(root, INFERENCE, reader_version=SCHEMA_VERSION, what=WHAT,
                                                   parse=InferenceResult.from_dict, skipped=skipped):
        entry = file.entry(what=WHAT, fix=FIX)
        runs.append(BenchRun(source=file.source, results=results, peaks=entry.opt("peaks", dict),
                             machine=file.machine, versions=file.versions, written_at=file.written_at,
                             extra={k: v for k, v in file.body.items() if k not in ("peaks", "results")},
                             path=file.path))
    return runs


def check_against_previous(root: Path | None, results: Sequence[Any],
                           written: Sequence[Path]) -> tuple[BenchRun, IntervalCheck] | None:
    """Do this run's p50s fall inside the previous run's 95% intervals (the check that the
    intervals hold)? None without a previous run with repeats on the same files."""
    groups = group_results([r for r in results if isinstance(r, InferenceResult)])
    # A bench file that cannot be read is the report's to name; it does not stop this check.
    previous = previous_run(read_runs(root, skipped=[]), groups, exclude=written)
    if previous is None or not groups:
        return None
    check = interval_check(previous, groups)
    return (previous, check) if check.compared else None
