"""Training recipes as data: how a spec is trained, validated when built, no TensorFlow.

    Recipe(optimizer="sgd", learning_rate=0.1, schedule="cosine", warmup_epochs=1,
           weight_decay=5e-4, label_smoothing=0.1, crop_padding=2, flip=True, erasing=0.25,
           epochs=30, batch_size=128, selection="best", teacher="frontier")

The defaults are the seed study's recipe (Adam at Keras's default rate, constant, no decay, no
smoothing, no augmentation but the "DA" specs' own set, 20 epochs of 512, the last epoch kept),
so the 17 seed specs train exactly as before. A field enters a run's manifest only when it
differs from that default (the four the seed already recorded, optimizer, batch_size, augment
and epochs, always do), so manifests and run ids of completed runs stay valid.

toolkit.fitting turns a recipe into Keras objects and input pipelines; toolkit.distill resolves
a teacher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.core.errors import UsageError

OPTIMIZERS = ("adam", "rmsprop", "adamw", "sgd")
# cosine: a stock Keras schedule (to 0, after an optional linear warm-up); linear: linear decay to 0
# after an optional warm-up; onecycle: linear up to the peak over warmup_epochs, then linearly to 0.
SCHEDULES = ("constant", "cosine", "linear", "onecycle")
SELECTIONS = ("last", "best")
# Keras's default learning rates, used where a recipe names none (the seed named none).
DEFAULT_LEARNING_RATE = {"adam": 1e-3, "rmsprop": 1e-3, "adamw": 1e-3, "sgd": 1e-2}
MAX_CROP_PADDING = 8
# The fields every manifest has carried since the seed (they stay even at their defaults).
SEED_FIELDS = ("optimizer", "batch_size", "augment", "epochs")


@dataclass(frozen=True)
class Recipe:
    optimizer: str = "adam"
    batch_size: int = 512
    augment: bool = False  # the seed's "DA" set: random flip, +-10% translation and zoom
    epochs: int = 20
    learning_rate: float | None = None  # None: the optimizer's Keras default (the seed's choice)
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    schedule: str = "constant"  # constant | cosine | linear | onecycle (SCHEDULES)
    warmup_epochs: float = 0.0  # at most half the run (a quick --epochs 1 run warms up for half of it)
    weight_decay: float = 0.0  # decoupled (Keras optimizers' weight_decay); BatchNorm and biases excluded
    label_smoothing: float = 0.0
    crop_padding: int = 0  # random crop after zero padding by this many pixels (0: off)
    flip: bool = False  # random horizontal flip
    erasing: float = 0.0  # probability of random erasing per image (0: off)
    selection: str = "last"  # keep the last epoch, or the best on the validation holdout
    teacher: str | None = None  # distil from this spec's trained run
    distill_alpha: float = 0.5  # weight of the teacher's probabilities in the target
    distill_temperature: float = 1.0  # softens the teacher's probabilities
    # Levers for short trainings (issue 21); each enters a manifest only when set.
    ema: float = 0.0  # per-step momentum of an exponential moving average of the weights (0: off);
    # the averaged weights are the ones validated, kept, saved and exported
    bn_momentum: float | None = None  # BatchNorm's moving-statistics momentum (None: Keras's 0.99)
    whiten_stem: bool = False  # initialise the first convolution with whitening filters of image patches

    def __post_init__(self) -> None:
        problems = list(self.problems())
        if problems:
            raise UsageError(f"recipe: {'; '.join(problems)}")

    def problems(self) -> Iterable[str]:
        yield from _choice("optimizer", self.optimizer, OPTIMIZERS)
        yield from _choice("schedule", self.schedule, SCHEDULES)
        yield from _choice("selection", self.selection, SELECTIONS)
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                yield f"{name} must be a positive integer, got {value!r}"
        if self.learning_rate is not None and not (_is_number(self.learning_rate) and self.learning_rate > 0):
            yield (f"learning_rate must be a positive number (or none: Keras's default), "
                   f"got {self.learning_rate!r}")
        if self.optimizer != "sgd" and (self.momentum, self.nesterov) != (0.9, True):
            yield ("momentum and nesterov apply to optimizer sgd only; allowed with other optimizers: "
                   "the defaults (0.9, true)")
        if not (_is_number(self.momentum) and 0 <= self.momentum < 1):
            yield f"momentum must be in [0, 1), got {self.momentum!r}"
        if not (_is_number(self.warmup_epochs) and self.warmup_epochs >= 0):
            yield f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}"
        elif self.warmup_epochs and self.schedule == "constant":
            yield "warmup_epochs needs a schedule (cosine, linear, onecycle; allowed with constant: 0)"
        elif self.schedule == "onecycle" and not self.warmup_epochs:
            yield "schedule onecycle rises over warmup_epochs: set warmup_epochs > 0 (e.g. 0.3 x epochs)"
        yield from self._lever_problems()
        yield from _fraction("weight_decay", self.weight_decay, "[0, 1)", high_open=True)
        yield from _fraction("label_smoothing", self.label_smoothing, "[0, 1)", high_open=True)
        yield from _fraction("erasing", self.erasing, "[0, 1]", high_open=False)
        for name in ("augment", "flip", "nesterov"):
            if not isinstance(getattr(self, name), bool):
                yield f"{name} must be true or false, got {getattr(self, name)!r}"
        if not _is_int(self.crop_padding) or not 0 <= self.crop_padding <= MAX_CROP_PADDING:
            yield f"crop_padding must be an integer in 0..{MAX_CROP_PADDING}, got {self.crop_padding!r}"
        if self.augment and (self.crop_padding or self.flip or self.erasing):
            yield ("augment (the seed's DA set) cannot be combined with crop_padding, flip or erasing; "
                   "allowed: one or the other")
        yield from self._distill_problems()

    def _lever_problems(self) -> Iterable[str]:
        if not (_is_number(self.ema) and 0 <= self.ema < 1):
            yield f"ema must be in [0, 1) (0: off; e.g. 0.999), got {self.ema!r}"
        if self.bn_momentum is not None and not (_is_number(self.bn_momentum) and 0 < self.bn_momentum < 1):
            yield f"bn_momentum must be in (0, 1) (or none: Keras's 0.99), got {self.bn_momentum!r}"
        if not isinstance(self.whiten_stem, bool):
            yield f"whiten_stem must be true or false, got {self.whiten_stem!r}"

    def _distill_problems(self) -> Iterable[str]:
        if self.teacher is not None and (not isinstance(self.teacher, str) or not self.teacher.strip()):
            yield f"teacher must be a spec name (or none), got {self.teacher!r}"
        if not (_is_number(self.distill_alpha) and 0 < self.distill_alpha <= 1):
            yield f"distill_alpha must be in (0, 1], got {self.distill_alpha!r}"
        if not (_is_number(self.distill_temperature) and self.distill_temperature > 0):
            yield f"distill_temperature must be > 0, got {self.distill_temperature!r}"
        if self.teacher is None and (self.distill_alpha, self.distill_temperature) != (0.5, 1.0):
            yield "distill_alpha and distill_temperature apply with a teacher only; set teacher=NAME"

    # ------------------------------------------------------------ views

    def learning_rate_value(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATE[self.optimizer]

    @property
    def augments(self) -> bool:
        """Whether training batches are augmented at all (seed DA set or the new ops)."""
        return bool(self.augment or self.crop_padding or self.flip or self.erasing)

    @property
    def dense_targets(self) -> bool:
        """Whether training needs probability targets (smoothing, distillation) instead of the seed's
        integer labels with sparse cross-entropy."""
        return bool(self.label_smoothing or self.teacher)

    def changed(self, base: Recipe | None = None) -> dict[str, Any]:
        """The fields that differ from `base` (default: the seed's recipe)."""
        base = base or SEED_RECIPE
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(base, f.name)}

    def manifest_fields(self) -> dict[str, Any]:
        """What a run's manifest records of the recipe: the seed's four fields, then any other field
        that differs from the seed's default."""
        return {**{name: getattr(self, name) for name in SEED_FIELDS}, **self.changed()}

    def describe(self) -> str:
        """A short text for tables: optimizer, rate and schedule, then what else differs."""
        parts = [self.optimizer + (f" {self.learning_rate:g}" if self.learning_rate is not None else "")]
        if self.schedule != "constant":
            warm = f" (warm-up {self.warmup_epochs:g} ep)" if self.warmup_epochs else ""
            parts.append(self.schedule + warm)
        if self.weight_decay:
            parts.append(f"wd {self.weight_decay:g}")
        if self.label_smoothing:
            parts.append(f"ls {self.label_smoothing:g}")
        ops = (("DA", self.augment), (f"crop{self.crop_padding}", self.crop_padding), ("flip", self.flip),
               (f"erase {self.erasing:g}", self.erasing))
        augment = [name for name, on in ops if on]
        if augment:
            parts.append("+".join(augment))
        if self.selection != "last":
            parts.append(f"{self.selection} epoch")
        if self.teacher:
            parts.append(f"teacher {self.teacher}")
        if self.ema:
            parts.append(f"ema {self.ema:g}")
        if self.bn_momentum is not None:
            parts.append(f"bn momentum {self.bn_momentum:g}")
        if self.whiten_stem:
            parts.append("whitened stem")
        return ", ".join(parts)


def replace(recipe: Recipe, **changes: Any) -> Recipe:
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise UsageError(f"unknown recipe field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}")
    return dataclasses.replace(recipe, **changes) if changes else recipe


def variant_id(recipe: Recipe, base: Recipe) -> str | None:
    """A short stable tag for a recipe that differs from the spec's own (epochs aside: the run id
    already names them), so a run with other settings never overwrites the spec's own run."""
    changed = {k: v for k, v in recipe.changed(base).items() if k != "epochs"}
    if not changed:
        return None
    digest = hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()
    return f"r{digest[:8]}"


# ---------------------------------------------------------------- FIELD=VALUE overrides


_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null", "")


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """`--recipe FIELD=VALUE` strings as typed values; unknown fields and bad values are usage
    errors naming the field and what it allows."""
    out: dict[str, Any] = {}
    for item in items or ():
        name, sep, raw = str(item).partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise UsageError(f"--recipe {item!r}: expected FIELD=VALUE, e.g. --recipe optimizer=sgd")
        if name not in FIELDS:
            raise UsageError(f"unknown recipe field {name!r}; allowed: {', '.join(FIELDS)}")
        out[name] = _coerce(name, raw.strip())
    return out


def _coerce(name: str, raw: str) -> Any:
    default = getattr(SEED_RECIPE, name)
    typed = {"learning_rate": float, "teacher": str, "bn_momentum": float, "ema": float}
    kind = typed.get(name, type(default))
    if name in ("learning_rate", "teacher", "bn_momentum") and raw.lower() in _NONE:
        return None
    try:
        if kind is bool:
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError
            return raw.lower() in _TRUE
        return kind(raw)
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[kind]
        raise UsageError(f"recipe field {name}={raw!r}: expected {expected}") from None


# ---------------------------------------------------------------- checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> Iterable[str]:
    if value not in allowed:
        yield f"{name} must be one of {', '.join(allowed)}; got {value!r}"


def _fraction(name: str, value: Any, interval: str, *, high_open: bool) -> Iterable[str]:
    ok = _is_number(value) and value >= 0 and (value < 1 if high_open else value <= 1)
    if not ok:
        yield f"{name} must be in {interval}, got {value!r}"


# The seed's recipe: what every field defaults to (built last: its checks use the helpers above).
SEED_RECIPE = Recipe()
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Recipe))
