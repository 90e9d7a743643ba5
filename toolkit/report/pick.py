"""The pick: the fastest row tied with the most accurate usable row within a budget, and the
text that says why (or why nothing fits)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from toolkit.report.judge import Judge
from toolkit.report.rows import Comparison, Row


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


def most_accurate(rows: Sequence[Row], budget: Budget) -> Row | None:
    """The best row: the most accurate usable row within the budget (then the fastest)."""
    fits = [r for r in usable(rows) if budget.fits(r)]
    return max(fits, key=lambda r: (r.accuracy, -r.p50_ms)) if fits else None


def fastest_tied(rows: Sequence[Row], judge: Judge, budget: Budget,
                 keep: Callable[[Row], bool] = lambda r: True) -> list[Row]:
    """The usable rows within the budget that `keep` accepts and that are not significantly less
    accurate than the best row (itself included), fastest first (then the smallest). Changes no
    row: the report's own pick is the first of these with `keep` accepting every row."""
    best = most_accurate(rows, budget)
    if best is None:
        return []
    tied = [r for r in usable(rows) if budget.fits(r) and keep(r)
            and (r is best or judge.accuracy(best, r).better is None)]
    return sorted(tied, key=lambda r: (r.p50_ms, r.size_mb))


def recommend(rows: Sequence[Row], judge: Judge,
              budget: Budget = Budget()) -> tuple[Row | None, Row | None, str]:
    """(pick, best, text). The best row is the most accurate usable row within the budget; rows
    not significantly less accurate than it are tied (Row.tied); the fastest tied row (then the
    smallest) is the pick. Every row gets its verdict against the best (Row.verdict)."""
    best = most_accurate(rows, budget)
    if best is None:
        return None, None, _no_pick(usable(rows), budget)
    for r in rows:
        if r.accuracy is not None:
            r.verdict = judge.accuracy(best, r) if r is not best else Comparison(None, None, "best")
            r.tied = r.verdict.better is None
    tied = [r for r in usable(rows) if budget.fits(r) and r.tied]
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
