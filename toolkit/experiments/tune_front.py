"""The search's promotion rule and its check, as plain functions of (accuracy, cost) points.

Optuna's pruners are single-objective, so promotion between fidelities is the toolkit's own:
asynchronous successive halving (ASHA) over the multi-objective front. At each fidelity the
candidates that finished it are ordered by non-dominated sorting on (validation accuracy: higher
is better, cost: lower is better), then by crowding distance within a front (the spread-out ones
first, as NSGA-II keeps them), then by accuracy; the first floor(n / eta) of the n that finished
it are promoted to the next fidelity, as soon as they are among them (a candidate never waits for
a whole rung to finish). Spearman's rho says how well a short fidelity's ranking predicted the
longest one's, over the candidates that reached both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]  # (accuracy: higher is better, cost: lower is better)


def dominates(a: Point, b: Point) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def front_ranks(points: Sequence[Point]) -> list[int]:
    """Non-dominated sorting: 0 for the points no other dominates, 1 for those only rank-0 points
    dominate, and so on."""
    ranks = [-1] * len(points)
    remaining = set(range(len(points)))
    rank = 0
    while remaining:
        front = {i for i in remaining
                 if not any(dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def crowding(points: Sequence[Point], members: Sequence[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each member of one front (its ends: infinite)."""
    out = dict.fromkeys(members, 0.0)
    if len(members) <= 2:
        return {i: math.inf for i in members}
    for axis in (0, 1):
        ordered = sorted(members, key=lambda i: points[i][axis])
        span = points[ordered[-1]][axis] - points[ordered[0]][axis]
        out[ordered[0]] = out[ordered[-1]] = math.inf
        if span <= 0:
            continue
        for k in range(1, len(ordered) - 1):
            out[ordered[k]] += (points[ordered[k + 1]][axis] - points[ordered[k - 1]][axis]) / span
    return out


def promotion_order(points: Sequence[Point]) -> list[int]:
    """Indices of `points`, best first: by front, then crowding distance, then accuracy."""
    ranks = front_ranks(points)
    distance: dict[int, float] = {}
    for rank in set(ranks):
        distance.update(crowding(points, [i for i, r in enumerate(ranks) if r == rank]))
    return sorted(range(len(points)), key=lambda i: (ranks[i], -distance[i], -points[i][0], points[i][1]))


def promotable(points: Sequence[Point], eta: int) -> list[int]:
    """The indices (best first) in the top floor(n / eta) of the n points that finished a fidelity."""
    return promotion_order(points)[: len(points) // eta]


def spearman(short: Sequence[float], long: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two accuracy lists (None below 3 pairs or without spread)."""
    if len(short) < 3 or len(set(short)) < 2 or len(set(long)) < 2:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr(short, long).statistic
    return None if rho is None or math.isnan(rho) else float(rho)
