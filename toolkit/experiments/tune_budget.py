"""The budgets and the cost of `toolkit tune`, and how a candidate is judged against them: before
training from the spec alone (toolkit.experiments.tune_estimate), after training on its measured
files (toolkit.experiments.tune_job).

Budgets are hard constraints: the microcontroller's (toolkit.core.boards.McuBudget: the
tflite-int8io file's bytes in flash, the arena TFLM measured plus its margin in RAM), parameters,
MFLOPs per image, and the int8 batch-1 latency on one thread (`--max-int8-ms`, measured on the
candidate's tflite-int8 file with LiteRT; not the report's --max-latency-ms, which reads the
benchmarks). The cost is the second objective, against validation accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from toolkit.core.boards import KIB, McuBudget
from toolkit.core.errors import UsageError
from toolkit.experiments.tune_estimate import CALIBRATION, Estimate, estimate

# The figures a candidate is judged on, in the order of Optuna's constraint vector.
FIGURES = ("flash", "arena", "params", "mflops", "latency")
MEASURED = ("flash", "arena", "latency")  # need the trained candidate's files


@dataclass(frozen=True)
class Cost:
    name: str
    label: str  # for tables and plots
    figure: str  # the FIGURES entry it reads
    scale: float  # the figure's value / scale is the objective (KiB, not bytes)


COSTS: dict[str, Cost] = {c.name: c for c in (
    Cost("flash", "int8io file (KiB)", "flash", KIB),
    Cost("arena", "TFLM arena + margin (KiB)", "arena", KIB),
    Cost("params", "parameters", "params", 1),
    Cost("mflops", "MFLOPs per image", "mflops", 1),
    Cost("latency", "int8 batch-1 p50, 1 thread (ms)", "latency", 1),
)}


def get_cost(name: str) -> Cost:
    try:
        return COSTS[name]
    except KeyError:
        raise UsageError(f"--cost {name!r} is not a cost; allowed: {', '.join(COSTS)}") from None


@dataclass(frozen=True)
class Budget:
    mcu: McuBudget = McuBudget()
    max_params: int | None = None
    max_mflops: float | None = None
    max_int8_ms: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("--max-params", self.max_params), ("--max-mflops", self.max_mflops),
                            ("--max-int8-ms", self.max_int8_ms)):
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be positive, got {value}")

    def limits(self) -> dict[str, float | None]:
        """Each figure's limit (bytes, count, MFLOPs, ms); None: no limit."""
        return {"flash": self.mcu.max_flash_bytes, "arena": self.mcu.max_ram_bytes, "params": self.max_params,
                "mflops": self.max_mflops, "latency": self.max_int8_ms}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.limits().items() if v is not None}

    def describe(self) -> str:
        parts = [_fmt(name, limit, "<=") for name, limit in self.limits().items() if limit is not None]
        board = f"{self.mcu.board.title}: " if self.mcu.board else ""
        return board + (", ".join(parts) if parts else "no budget")


LABELS = {"flash": "int8io file", "arena": "arena", "params": "params", "mflops": "MFLOPs",
          "latency": "int8 b1 p50"}


def amount(figure: str, value: float) -> str:
    """A figure's value in its unit: KiB for the file and the arena (bytes inside), ms, counts."""
    if figure in ("flash", "arena"):
        return f"{value / KIB:,.1f} KiB"
    if figure == "params":
        return f"{value:,.0f}"
    if figure == "mflops":
        return f"{value:,.2f}"
    return f"{value:.4f} ms"


def _fmt(figure: str, value: float, relation: str) -> str:
    return f"{LABELS[figure]} {relation} {amount(figure, value)}"


def _over(figure: str, value: float, limit: float, *, relation: str = ">", note: str = "") -> str:
    return f"{LABELS[figure]} {amount(figure, value)}{note} {relation} {amount(figure, limit)}"


def needs(budget: Budget, cost: Cost) -> tuple[str, ...]:
    """The measured figures a search needs: its cost's, and every measured budget's."""
    limits = budget.limits()
    return tuple(f for f in MEASURED if f == cost.figure or limits[f] is not None)


# ---------------------------------------------------------------- judging


def before_training(budget: Budget, est: Estimate) -> list[str]:
    """Why a candidate cannot fit, from its spec alone (empty: it may fit). Parameters and MFLOPs
    are exact; the file and the arena count only when even the estimate less its calibrated error
    is over the limit, so an estimate never rejects a candidate that fits."""
    limits = budget.limits()
    reasons = [_over(f, v, limits[f]) for f, v in (("params", est.params), ("mflops", est.mflops))
               if limits[f] is not None and v > limits[f]]
    for figure, value in (("flash", est.flash_bytes), ("arena", est.arena_bytes)):
        limit = limits[figure]
        if limit is not None and est.low(figure) > limit:
            reasons.append(_over(figure, value, limit, note=" (estimated)"))
    return reasons


def figures_of(est: Estimate, measured: dict[str, Any] | None) -> dict[str, float | None]:
    """Every figure of a candidate: counted, and measured where it was (None: not measured)."""
    measured = measured or {}
    return {"flash": measured.get("flash"), "arena": measured.get("arena"), "params": est.params,
            "mflops": est.mflops, "latency": measured.get("latency")}


def violations(budget: Budget, figures: dict[str, float | None]) -> list[float]:
    """Optuna's constraint vector, in FIGURES order: (value - limit) / limit, > 0 when over;
    0 where there is no limit or the figure is not measured yet."""
    limits = budget.limits()
    out = []
    for figure in FIGURES:
        limit, value = limits[figure], figures.get(figure)
        out.append(0.0 if limit is None or value is None else (float(value) - limit) / limit)
    return out


def why_not(budget: Budget, figures: dict[str, float | None]) -> list[str]:
    """The budgets a candidate's figures break, one phrase each (empty: it fits)."""
    limits = budget.limits()
    return [_over(f, figures[f], limits[f]) for f in FIGURES
            if limits[f] is not None and figures.get(f) is not None and figures[f] > limits[f]]


def cost_value(cost: Cost, figures: dict[str, float | None]) -> float | None:
    value = figures.get(cost.figure)
    return None if value is None else float(value) / cost.scale


# ---------------------------------------------------------------- can anything fit?


def check_space_fits(archs: Iterable[Any], exhaustive: bool, *, family: str, budget: Budget,
                     source: str) -> int:
    """Raise a UsageError, before any training, when no architecture of the space passes the
    checks made before training; returns how many architectures were looked at."""
    from toolkit.specs import Spec

    smallest: dict[str, float] = {}
    seen = 0
    for arch in archs:
        seen += 1
        est = estimate(Spec(name="probe", family=family, arch=arch))
        if not before_training(budget, est):
            return seen
        for figure, value in (("params", est.params), ("mflops", est.mflops), ("flash", est.low("flash")),
                              ("arena", est.low("arena"))):
            smallest[figure] = min(smallest.get(figure, value), value)
    if not seen:
        raise UsageError(f"{source}: no architecture of the space is valid for its family; check its fields "
                         "against `toolkit list --json` (docs/tune.md)")
    limits = budget.limits()
    over = [f"the smallest {_over(f, smallest[f], limits[f])}" for f in ("params", "mflops", "flash", "arena")
            if limits[f] is not None and smallest[f] > limits[f]]
    how = "all" if exhaustive else "a sample and the extremes of"
    raise UsageError(
        f"nothing in {source} fits the budget ({how} its {seen:,} architectures checked before any "
        f"training): {'; '.join(over) or 'no architecture meets every limit at once'} (file and arena: "
        "the estimate less "
        f"its calibrated error, {CALIBRATION['flash']['highest']:+.1%}); relax the budget or widen the space "
        "(--space FILE, docs/tune.md)")
