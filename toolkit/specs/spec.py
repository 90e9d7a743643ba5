"""A spec: a named experiment, a model family with its architecture fields, and a training recipe,
as a frozen dataclass validated when built (toolkit.specs.study and toolkit.specs.new hold the
registered ones; toolkit.specs.registry looks them up)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from toolkit.core.contract import MIXED_PRECISION_MODES
from toolkit.core.errors import UsageError
from toolkit.families import get_family
from toolkit.families.base import Family
from toolkit.families.graph import Counts
from toolkit.specs import recipe as recipes
from toolkit.specs.recipe import Recipe

ORIGINS = ("study", "new", "user")


@dataclass(frozen=True)
class Reported:
    """The seed's own figures for a spec (Tables 3 and 4 of the study)."""

    test_accuracy: float
    train_accuracy: float
    train_loss: float
    train_seconds: float
    val_accuracy: float
    val_loss: float


@dataclass(frozen=True)
class Spec:
    """A named experiment: a model family with its architecture fields, and a training recipe."""

    name: str
    family: str
    arch: Any  # the family's architecture dataclass (toolkit.families)
    recipe: Recipe = recipes.SEED_RECIPE
    validation_fraction: float = 0.1
    origin: str = "new"  # "study": one of the seed study's 17; "new": added since; "user": a spec file's
    # The default training arithmetic (toolkit.precision): the run's manifest records the mode it
    # resolved to, so it is not part of summary().
    mixed_precision: str = "off"
    readings: tuple[str, ...] = ()
    reported: Reported | None = field(default=None, compare=False)
    source: str | None = field(default=None, compare=False)  # a user spec's file (toolkit.specs.user)

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise UsageError(f"spec {self.name!r} is invalid: {'; '.join(problems)}")

    def _problems(self) -> Iterable[str]:
        try:
            family = get_family(self.family)
        except UsageError as exc:
            yield f"family: {exc.message}"
            return
        if family.name != self.family:
            yield f"family must be spelled {family.name!r}, got {self.family!r}"
        yield from family.problems(self.arch)
        if not 0.0 < self.validation_fraction < 0.5:
            yield f"validation_fraction must be in (0, 0.5), got {self.validation_fraction}"
        if self.origin not in ORIGINS:
            yield f"origin must be one of {', '.join(ORIGINS)}, got {self.origin!r}"
        if self.recipe.teacher == self.name:
            yield f"teacher: {self.name} cannot distil from itself; allowed: another trained spec"
        if self.mixed_precision not in MIXED_PRECISION_MODES:
            yield f"mixed_precision must be one of {MIXED_PRECISION_MODES}, got {self.mixed_precision!r}"

    # ------------------------------------------------------------ the family's view

    @property
    def family_entry(self) -> Family:
        return get_family(self.family)

    @cached_property
    def counts(self) -> Counts:
        """Parameters, multiply-adds and embedding size from the architecture alone (no TensorFlow)."""
        return self.family_entry.counts(self.arch)

    def param_count(self) -> int:
        return self.counts.params

    def mflops_per_image(self) -> float:
        """Multiply-adds x 2 of conv, depthwise and dense layers (BatchNorm, activations and pooling
        are not counted)."""
        return self.counts.mflops

    def embedding_size(self) -> int:
        return self.counts.embedding_size

    def describe(self) -> str:
        return self.family_entry.describe(self.arch)

    @property
    def study(self) -> bool:
        return self.origin == "study"

    # ------------------------------------------------------------ the recipe's fields, read often

    @property
    def epochs(self) -> int:
        return self.recipe.epochs

    @property
    def batch_size(self) -> int:
        return self.recipe.batch_size

    @property
    def optimizer(self) -> str:
        return self.recipe.optimizer

    @property
    def augment(self) -> bool:
        return self.recipe.augment

    def summary(self) -> dict[str, Any]:
        """What a run's manifest records of the spec. For the seed's specs this is exactly what it
        recorded before families and recipes existed, so their completed runs are reused.
        The mixed-precision mode is left out: the manifest carries the mode it resolved to (only
        when not float32, so float32 runs keep their ids)."""
        return {"name": self.name, "family": self.family, **self.family_entry.summary(self.arch),
                **self.recipe.manifest_fields(), "validation_fraction": self.validation_fraction}
