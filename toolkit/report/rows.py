"""The report's rows and what a row costs: the data every other part of toolkit.report reads
(Row, MemoryFigures, Comparison, Report). Imports nothing of toolkit.report itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import stats

BENCH = "bench"  # Row.source of measured files; other sources are shown, never compared
SERVED = "loadtest"  # Row.source of `toolkit loadtest` results: shown, never compared


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
    peak_kind: str | None = None  # which measured GEMM peak (toolkit.benchmark.peaks.PEAK_KINDS)
    computes: str | None = None  # the precision the runtime computes (its parity row or bench record)
    isa: list[str] | None = None  # instruction sets its kernels used, where the runtime says (OpenVINO)
    settings: dict[str, Any] | None = None  # the runtime's settings behind the figures (OpenVINO)
    check: dict[str, Any] | None = None
    memory: MemoryFigures | None = None
    memory_note: str = ""
    measured_at: str | None = None
    load_avg: float | None = None  # highest 1-minute load average among the results used
    source: str = BENCH
    sha256: str | None = None  # of the file the row measured
    path: str | None = None  # that file
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
        # The precision computed is named where it is not the file's own (never hidden).
        computes = f" ({self.computes})" if self.computes and self.computes != self.precision else ""
        return f"{self.spec} {self.key} {self.runtime}{computes} {self.device}"

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
    picks: Any = None  # the pick record this report writes (toolkit.core.pick_record.PickRecord)
    mcu: Any = None  # the microcontroller section (toolkit.report.mcu.McuSection), if any file has one
    skipped_files: list[Any] = field(default_factory=list)  # bench files that could not be read

    def raise_for_skipped(self) -> None:
        """Exit 7 after a report written without some bench files: each named, with its fix."""
        if self.skipped_files:
            from toolkit.core.errors import PartialFailure

            first, others = self.skipped_files[0], len(self.skipped_files) - 1
            more = f" (and {others} more, in the notes)" if others else ""
            raise PartialFailure(f"the report was written without {len(self.skipped_files)} bench file(s) "
                                 f"that could not be read: {first.path}: {first.reason}{more}")


COSTS = ("latency", "size", "memory")


def cost_of(row: Row, cost: str) -> float | None:
    return {"latency": row.p50_ms, "size": row.size_mb, "memory": row.peak_b1_mb}[cost]


def cost_interval(row: Row, cost: str) -> stats.Interval | None:
    if cost == "latency":
        return row.p50_interval
    if cost == "memory" and row.memory is not None:
        return row.memory.peak_b1_interval
    return None
