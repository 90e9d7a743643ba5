"""Spatial bookkeeping shared by the families whose stages halve the map: how many stages fit."""

from __future__ import annotations

import math

from toolkit.core.contract import IMAGE_SHAPE


def halvings(side: int) -> int:
    """How many stride-2 steps (same padding) take `side` down to 1x1: 28 -> 14 -> 7 -> 4 -> 2 -> 1 is 5."""
    steps = 0
    while side > 1:
        side = math.ceil(side / 2)
        steps += 1
    return steps


def stem_side(stride: int) -> int:
    return math.ceil(IMAGE_SHAPE[0] / stride)


def too_many_downsamplings(field: str, count: int, side: int, what: str) -> str | None:
    """A problem line when `count` stride-2 steps would downsample a 1x1 map (a no-op at best)."""
    allowed = halvings(side)
    if count <= allowed:
        return None
    return (f"{field}: {count} {what} halve the {side}x{side} map after the stem below 1x1; allowed: at "
            f"most {allowed} ({' -> '.join(str(s) for s in _sides(side))})")


def _sides(side: int) -> list[int]:
    out = [side]
    while side > 1:
        side = math.ceil(side / 2)
        out.append(side)
    return out
