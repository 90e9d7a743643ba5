"""The benchmark result files under ARTIFACTS/bench/: one typed record, one writer, one reader.

    {"schema_version": 2, "kind": "inference", "source": "cli" | "pytest", "written_at": ...,
     "machine": {...}, "versions": {...}, "peaks": {...}, "results": [InferenceResult, ...]}

Every file under artifacts/bench/ carries a `kind`. This module owns "inference" (one file per
`toolkit bench` or `pytest bench/` run); other kinds ("training", "memory", "loadtest") are
written by their owners, and `read_runs` skips every kind it does not own. A file without
`kind` is an inference file (what the toolkit wrote before kinds existed), and a file without
`schema_version` is version 1; a newer version is refused (upgrade the toolkit).

Versions of the inference kind: 2 adds `kind` and `schema_version`, and each case's `sha256` is
the file measured (not the one exports.json names); 1 is read as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import artifacts, records
from toolkit.benchmark.plan import INFERENCE, BenchCase
from toolkit.contract import package_versions
from toolkit.errors import ArtifactError, ToolkitError

SCHEMA_VERSION = 2
WHAT = "benchmark results"
FIX = "Delete it and rerun `toolkit bench`"
_STATS = ("rounds", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "stddev_ms", "images_per_s")
# Result fields besides the case, the stats and `notes` (whatever the runtime adds: provider, gpu...).
_FIELDS = ("id", "timed", "warmup_calls", "params", "mflops_per_image", "inputs", "reference", "check",
           "versions", "measured_at", "tf_threads", "load_avg_1m", "peak_g_per_s", "pct_of_peak")


@dataclass(frozen=True)
class TimingStats:
    """Statistics of raw per-call timings, in milliseconds, and images/s (batch / p50)."""

    rounds: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    stddev_ms: float
    images_per_s: float

    @classmethod
    def from_times(cls, times_s: Any, *, batch: int, what: str = "a case") -> TimingStats:
        arr = np.asarray(times_s, dtype=np.float64)
        if arr.size == 0:
            raise ToolkitError(f"{what}: the timer recorded no calls, so there is nothing to summarize; "
                               "rerun with --seconds larger than 0")
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        return cls(rounds=int(arr.size), p50_ms=float(p50 * 1e3), p90_ms=float(p90 * 1e3),
                   p99_ms=float(p99 * 1e3), mean_ms=float(arr.mean() * 1e3), min_ms=float(arr.min() * 1e3),
                   max_ms=float(arr.max() * 1e3),
                   stddev_ms=float(arr.std(ddof=1) * 1e3) if arr.size > 1 else 0.0,
                   images_per_s=float(batch / p50))


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

    @property
    def id(self) -> str:
        return self.case.id

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.case.to_dict(), "id": self.id, "timed": self.timed, "warmup_calls": self.warmup_calls,
            "params": self.params, "mflops_per_image": self.mflops_per_image, "inputs": self.inputs,
            "reference": self.reference, "check": self.check, "versions": self.versions,
            "measured_at": self.measured_at, "tf_threads": self.tf_threads, "load_avg_1m": self.load_avg_1m,
            **self.notes,
        }
        if self.stats is not None:
            out.update({name: getattr(self.stats, name) for name in _STATS})
        if self.peak_g_per_s is not None:
            out.update(peak_g_per_s=self.peak_g_per_s, pct_of_peak=self.pct_of_peak)
        return out

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path) -> InferenceResult:
        if not isinstance(doc, dict):
            raise ArtifactError(f"{path}: a {WHAT} entry is not an object. {FIX}")

        def req(name, types):
            return records.require(doc, name, types, path=path, what=f"{WHAT} entry")

        def opt(name, types, default=None):
            return records.optional(doc, name, types, path=path, what=f"{WHAT} entry", default=default)

        number = (int, float)
        timed = req("timed", bool)
        stats = None
        if timed:
            stats = TimingStats(**{n: req(n, int if n == "rounds" else number) for n in _STATS})
        case = BenchCase.from_dict(doc, path=path)
        known = {*case.to_dict(), *_FIELDS, *_STATS}
        return cls(
            case=case, timed=timed, stats=stats, check=req("check", dict), params=req("params", int),
            mflops_per_image=req("mflops_per_image", number), measured_at=opt("measured_at", str),
            warmup_calls=opt("warmup_calls", int, 0), inputs=opt("inputs", str),
            reference=opt("reference", str),
            versions=opt("versions", dict, {}), tf_threads=opt("tf_threads", int),
            load_avg_1m=opt("load_avg_1m", number), peak_g_per_s=opt("peak_g_per_s", number),
            pct_of_peak=opt("pct_of_peak", number),
            notes={k: v for k, v in doc.items() if k not in known},
        )


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


def write_run(root: str | Path | None, run: BenchRun) -> Path:
    """One file per run under ROOT/bench/ (atomic), read by `toolkit report`."""
    from toolkit.benchmark.peaks import machine_info

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = artifacts.bench_dir(root) / f"{stamp}-{run.source}-{os.getpid()}.json"
    artifacts.write_json(path, {
        records.VERSION_KEY: SCHEMA_VERSION,
        records.KIND_KEY: INFERENCE,
        "source": run.source,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": run.machine or machine_info(),
        "versions": run.versions or package_versions(),
        "peaks": run.peaks,
        **run.extra,
        "results": [r.to_dict() for r in run.results],
    })
    return path


def read_runs(root: str | Path | None) -> list[BenchRun]:
    """Every inference run under ROOT/bench/, oldest first. Files of other kinds are skipped; a
    corrupt file, a newer schema or a missing field is an ArtifactError naming the file."""
    folder = artifacts.bench_dir(root)
    if not folder.is_dir():
        return []
    runs = []
    for path in sorted(folder.glob("*.json")):
        doc = artifacts.read_json(path, what=WHAT, fix=f"{FIX}.")
        if not isinstance(doc, dict):
            raise ArtifactError(f"{path}: {WHAT} is not a JSON object. {FIX}")
        if records.kind_of(doc, default=INFERENCE) != INFERENCE:
            continue  # training, memory, loadtest...: their owners read them
        records.check_version(doc, path=path, what=WHAT, reader_version=SCHEMA_VERSION)
        entries = records.require(doc, "results", list, path=path, what=WHAT)
        known = {records.VERSION_KEY, records.KIND_KEY, "source", "written_at", "machine", "versions",
                 "peaks", "results"}
        runs.append(BenchRun(
            source=records.optional(doc, "source", str, path=path, what=WHAT, default="unknown"),
            results=[InferenceResult.from_dict(e, path=path) for e in entries],
            peaks=records.optional(doc, "peaks", dict, path=path, what=WHAT),
            machine=records.optional(doc, "machine", dict, path=path, what=WHAT, default={}),
            versions=records.optional(doc, "versions", dict, path=path, what=WHAT, default={}),
            written_at=records.optional(doc, "written_at", str, path=path, what=WHAT),
            extra={k: v for k, v in doc.items() if k not in known},
            path=path,
        ))
    runs.sort(key=lambda r: (r.written_at or "", str(r.path)))
    return runs
