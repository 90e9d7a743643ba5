"""How every benchmark kind times a call: raw per-call seconds around the call only, rounds planned
from the warm-up, and the statistics of those timings (p50/p90/p99, images/s = batch / p50, the
median call, robust to a noisy shared CPU)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import records
from toolkit.core.errors import ToolkitError

STATS = ("rounds", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "stddev_ms", "images_per_s")


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

    @classmethod
    def from_doc(cls, doc: dict[str, Any], *, path: Path, what: str) -> TimingStats | None:
        """The statistics stored flat in a result entry (None for an untimed one)."""
        if not records.require(doc, "timed", bool, path=path, what=what):
            return None
        return cls(**{n: records.require(doc, n, int if n == "rounds" else (int, float), path=path, what=what)
                      for n in STATS})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in STATS}


def plan_rounds(warmup_times: Sequence[float], seconds: float, *, min_rounds: int = 20,
                max_rounds: int = 2000) -> int:
    settled = sorted(warmup_times[2:] or warmup_times)
    estimate = max(settled[len(settled) // 2], 1e-6)
    return int(min(max_rounds, max(min_rounds, seconds / estimate)))


Timer = Callable[[Callable[[], Any], Callable[[], None], int], "list[float] | None"]


def own_timer(target: Callable[[], Any], after: Callable[[], None], rounds: int) -> list[float]:
    """The CLI's clock: perf_counter around the call only; the check runs after each call."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        target()
        times.append(time.perf_counter() - t0)
        after()
    return times
