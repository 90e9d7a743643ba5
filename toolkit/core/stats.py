"""The statistics every comparison uses, in one place, over scipy (no hand-written formulas):

    accuracy_interval(correct, n)      95% Wilson interval of a proportion (scipy binomtest)
    mcnemar(a_correct, b_correct)      exact two-sided McNemar test on the discordant pairs
    seed_spread(values)                mean, sample standard deviation and range across seeds
    t_interval(values)                 95% Student-t interval of a mean (process-level repeats)

Parity, the report, the sweep tables and `toolkit train`'s summary all call these, so an
interval means the same thing everywhere. Imports only numpy and scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # a paired difference with p < ALPHA is called significant
INTERVAL_METHOD = "wilson"  # scipy's binomtest().proportion_ci: "wilson" or "exact" (Clopper-Pearson)


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval [low, high]."""

    estimate: float
    low: float
    high: float
    n: int  # trials (a proportion) or measurements (a mean)
    method: str

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def accuracy_interval(correct: int, n: int, *, confidence: float = CONFIDENCE,
                      method: str = INTERVAL_METHOD) -> Interval:
    """The `confidence` interval of `correct` successes out of `n` (Wilson by default)."""
    from scipy.stats import binomtest

    if n <= 0:
        raise ValueError(f"an accuracy interval needs at least one trial, got n={n}")
    correct = int(correct)
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be in 0..{n}, got {correct}")
    ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method=method)
    return Interval(correct / n, float(ci.low), float(ci.high), n, method)


def interval_of_accuracy(accuracy: float, n: int, **kwargs) -> Interval:
    """The interval of an accuracy recorded as a fraction of `n` images (metrics.json, parity)."""
    return accuracy_interval(round(accuracy * n), n, **kwargs)


@dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test of two classifiers on the same images.

    `only_a`: images A got right and B wrong; `only_b`: the reverse. The p-value is the exact
    two-sided binomial test of only_a against only_a + only_b at 1/2 (1.0 with no discordant pair).
    """

    only_a: int
    only_b: int
    p_value: float
    n: int

    @property
    def discordant(self) -> int:
        return self.only_a + self.only_b

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def a_better(self) -> bool:
        """A is significantly more accurate than B."""
        return self.significant and self.only_a > self.only_b


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> PairedTest:
    """Exact McNemar test on two boolean arrays of per-image correctness (same images, same order)."""
    from scipy.stats import binomtest

    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired predictions must be two 1-D arrays of one length, got {a.shape} "
                         f"and {b.shape}")
    only_a = int(np.count_nonzero(a & ~b))
    only_b = int(np.count_nonzero(~a & b))
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return PairedTest(only_a, only_b, min(p, 1.0), len(a))


def paired_predictions(a_pred: np.ndarray, b_pred: np.ndarray, labels: np.ndarray) -> PairedTest:
    """McNemar of two top-1 prediction arrays against the labels of the same images."""
    labels = np.asarray(labels)
    return mcnemar(np.asarray(a_pred) == labels, np.asarray(b_pred) == labels)


@dataclass(frozen=True)
class Spread:
    """Values across seeds (or processes): mean, sample std (None with one value), range."""

    mean: float
    std: float | None
    low: float
    high: float
    n: int


def seed_spread(values: Sequence[float]) -> Spread | None:
    if not len(values):
        return None
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return Spread(float(arr.mean()), std, float(arr.min()), float(arr.max()), int(arr.size))


def t_interval(values: Sequence[float], *, confidence: float = CONFIDENCE,
               log: bool = False) -> Interval | None:
    """The Student-t interval of the mean of `values` (independent measurements, e.g. one per
    process); None with fewer than two values, since one measurement has no spread.

    With `log`, on the log scale: the estimate is the geometric mean and the bounds are the
    exponentiated interval, for positive quantities whose noise is multiplicative (timings under
    a shared CPU): the bounds stay positive and a slow outlier widens the interval upwards."""
    from scipy.stats import t

    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size < 2 or (log and np.any(arr <= 0)):
        return None
    data = np.log(arr) if log else arr
    mean = float(data.mean())
    sem = float(data.std(ddof=1)) / math.sqrt(arr.size)
    method = "t, log scale" if log else "t"
    if sem == 0:
        low = high = mean
    else:
        low, high = (float(v) for v in t.interval(confidence, arr.size - 1, loc=mean, scale=sem))
    if log:
        return Interval(math.exp(mean), math.exp(low), math.exp(high), int(arr.size), method)
    return Interval(mean, low, high, int(arr.size), method)


# ---------------------------------------------------------------- formatting


def fmt_interval(interval: Interval | None, spec: str = ".4f", *, scale: float = 1.0) -> str:
    """'0.9259 [0.9206, 0.9309]' (values times `scale`), '-' without an interval."""
    if interval is None:
        return "-"
    return (f"{format(interval.estimate * scale, spec)} "
            f"[{format(interval.low * scale, spec)}, {format(interval.high * scale, spec)}]")


def fmt_range(value: float | None, interval: Interval | None, spec: str = ".3f") -> str:
    """'0.438 (0.396-0.484)': a value and its interval's bounds; the bare value without one."""
    if value is None:
        return "-"
    if interval is None:
        return format(value, spec)
    return f"{format(value, spec)} ({format(interval.low, spec)}-{format(interval.high, spec)})"


def fmt_pm(interval: Interval | None, spec: str = ".3f") -> str:
    """'0.481 ± 0.012' (half the interval's width), '-' without an interval."""
    if interval is None:
        return "-"
    return f"{format(interval.estimate, spec)} ± {format(interval.half_width, spec)}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
