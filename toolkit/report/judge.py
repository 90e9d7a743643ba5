"""Which differences between report rows are real (toolkit.core.stats): accuracy by McNemar's
paired test (or the seed spread, or interval overlap), costs by non-overlapping intervals; the
fronts they make (see toolkit.report.build for the rules in words)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from toolkit.core import stats
from toolkit.report.rows import COSTS, Comparison, Row, cost_interval, cost_of


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
