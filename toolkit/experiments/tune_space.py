"""The search space of `toolkit tune` as data: one family, and per architecture and recipe field a
fixed value, a choice or a range, read from TOML (DEFAULT_SPACE for BNConv, or a user's file).

    family = "BNConv"
    mixed_precision = "auto"
    [architecture]
    stem_filters = [8, 16, 32]                   # a list: a choice among its values
    stem_stride = 2                              # a scalar: fixed
    stage_width = {low = 8, high = 96, step = 8} # a range: int when low and high are ints
    [recipe]
    learning_rate = {low = 0.001, high = 0.01, log = true}
    teacher = ["none", "frontier"]               # a choice of teacher: only trained specs

A field whose value is itself a list (BNConv's `stages`) is fixed with `{value = [[16], [32]]}`; a
plain list of such values is a choice among them. BNConv's stages can also come from four derived
fields (STAGE_FIELDS): stage_count, stage_convs, stage_width and stage_growth (stage i has
stage_convs convolutions of stage_width x stage_growth^i, rounded to a multiple of 8). The recipe's
epochs are the search's fidelities (--rungs), never a field of the space.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.core.errors import UsageError
from toolkit.families import get_family
from toolkit.specs import Spec
from toolkit.specs import recipe as recipes
from toolkit.specs.user import tomllib

KINDS = ("fixed", "choice", "int", "float")
STAGE_FIELDS = ("stage_count", "stage_convs", "stage_width", "stage_growth")
NO_TEACHER = "none"
SPACE_FIELDS = ("family", "mixed_precision", "architecture", "recipe")
SHAPE = "family = NAME, [architecture] and [recipe] tables of values, lists (choices) and {low, high} ranges"

# The default space: small BNConv nets for microcontroller-sized budgets (a few KiB to a few hundred
# KiB of int8 weights, strided or patchify stems for short latencies), trained with the recipe
# levers of the registered specs. `selection = "last"`: the validation figure the search ranks by
# is then not also the one that chose the epoch.
DEFAULT_SPACE = """\
family = "BNConv"
mixed_precision = "auto"

[architecture]
stem_filters = [8, 16, 24, 32]
stem_kernel = [3, 4]
stem_stride = [1, 2, 4]
downsample = ["maxpool", "stride"]
pooling = ["gap", "flatten"]
hidden_units = [0, 32, 64]
dropout = [0.0, 0.2]
stage_count = [1, 2, 3]
stage_convs = [1, 2]
stage_width = {low = 8, high = 96, step = 8}
stage_growth = [1.0, 1.5, 2.0]

[recipe]
optimizer = "adamw"
learning_rate = {low = 0.001, high = 0.01, log = true}
weight_decay = {low = 0.0001, high = 0.05, log = true}
schedule = "cosine"
warmup_epochs = 1
label_smoothing = [0.0, 0.1]
crop_padding = [0, 2]
flip = [false, true]
erasing = [0.0, 0.1, 0.25]
batch_size = 128
selection = "last"
"""


@dataclass(frozen=True)
class Dim:
    """One field of the space: fixed, a choice among values, or an int or float range."""

    name: str  # "architecture.stem_filters", "recipe.learning_rate"
    kind: str
    values: tuple[Any, ...] = ()  # fixed: one value; choice: the values
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    @property
    def field(self) -> str:
        return self.name.partition(".")[2]

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial picks (a fixed field asks nothing)."""
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            labels = [_label(v) for v in self.values]
            return self.values[labels.index(trial.suggest_categorical(self.name, labels))]
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid(self, points: int = 0) -> list[Any]:
        """Values to enumerate the space with: every choice, every int of a stepped range (else
        `points` spread over it, ends included)."""
        if self.kind in ("fixed", "choice"):
            return list(self.values)
        if self.kind == "int" and not self.log:
            every = list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
            if not points or len(every) <= points:
                return every
        count = max(points, 2)
        spread = [self.low + (self.high - self.low) * i / (count - 1) for i in range(count)]
        return sorted({int(round(v)) for v in spread}) if self.kind == "int" else spread

    def describe(self) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return list(self.values)
        return {k: v for k, v in (("low", self.low), ("high", self.high), ("step", self.step),
                                  ("log", self.log or None)) if v is not None}


def _label(value: Any) -> Any:
    """An Optuna categorical value: the value itself when Optuna stores it, else its JSON."""
    return value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)


@dataclass(frozen=True)
class Space:
    family: str
    arch: tuple[Dim, ...]
    recipe: tuple[Dim, ...]
    mixed_precision: str
    source: str  # "default BNConv space" or the file it came from

    @property
    def dims(self) -> tuple[Dim, ...]:
        return self.arch + self.recipe

    @property
    def searched(self) -> list[Dim]:
        return [d for d in self.dims if d.kind != "fixed"]

    def describe(self) -> dict[str, Any]:
        """The space as data (what identifies a search, with its budgets)."""
        return {"family": self.family, "mixed_precision": self.mixed_precision,
                "architecture": {d.field: d.describe() for d in self.arch},
                "recipe": {d.field: d.describe() for d in self.recipe}}

    def teachers(self) -> list[str]:
        dim = next((d for d in self.recipe if d.field == "teacher"), None)
        return [v for v in (dim.values if dim else ()) if v is not None]

    def with_teachers(self, names: list[str]) -> Space:
        """The space with `names` added to the teacher choice (no distillation stays a choice)."""
        if not names:
            return self
        current = next((d for d in self.recipe if d.field == "teacher"), None)
        values = list(current.values if current else (None,))
        values += [n for n in names if n not in values]
        dim = Dim("recipe.teacher", "choice" if len(values) > 1 else "fixed", tuple(values))
        recipe = tuple(d for d in self.recipe if d.field != "teacher") + (dim,)
        return dataclasses.replace(self, recipe=recipe)

    # ------------------------------------------------------------ candidates

    def suggest(self, trial: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(architecture fields, recipe fields) an Optuna trial picks."""
        arch = {d.field: d.suggest(trial) for d in self.arch}
        return arch, {d.field: d.suggest(trial) for d in self.recipe}

    def candidate(self, arch: dict[str, Any], recipe: dict[str, Any], *, epochs: int, prefix: str) -> Spec:
        """The spec of these picks, named after its content (identical picks share a name, and so
        their runs); an impossible combination is a UsageError naming the field."""
        family = get_family(self.family)
        fields = _arch_fields(self.family, arch)
        made = Spec(name="candidate", family=family.name, arch=family.arch(**fields),
                    recipe=recipes.Recipe(**{**recipe, "epochs": epochs}),
                    mixed_precision=self.mixed_precision)
        digest = hashlib.sha256(json.dumps([made.summary(), self.mixed_precision], sort_keys=True,
                                           default=str).encode()).hexdigest()[:8]
        return dataclasses.replace(made, name=f"{prefix}-{digest}")

    def architectures(self, limit: int = 5000, seed: int = 0) -> tuple[Iterator[Any], bool]:
        """(architectures of the space, exhaustive?): every one when there are at most `limit`,
        else `limit` sampled plus each field's extremes with the others at their first value.
        Impossible combinations are left out."""
        grids = [(d.field, d.grid(points=5)) for d in self.arch]
        total = 1
        for _, values in grids:
            total *= len(values)
        if total <= limit:
            combos: Iterator[tuple[Any, ...]] = itertools.product(*(v for _, v in grids))
        else:
            combos = _sampled(grids, limit, seed)
        family = get_family(self.family)
        names = [n for n, _ in grids]

        def built() -> Iterator[Any]:
            for combo in combos:
                try:
                    arch = family.arch(**_arch_fields(self.family, dict(zip(names, combo, strict=True))))
                except UsageError:
                    continue
                if not family.problems(arch):
                    yield arch

        return built(), total <= limit


def _sampled(grids: list[tuple[str, list[Any]]], limit: int, seed: int) -> Iterator[tuple[Any, ...]]:
    firsts = [v[0] for _, v in grids]
    for i, (_, values) in enumerate(grids):  # each field's extremes, the others at their first value
        for value in (values[0], values[-1]):
            yield tuple(value if j == i else f for j, f in enumerate(firsts))
    rng = random.Random(seed)
    for _ in range(limit):
        yield tuple(rng.choice(values) for _, values in grids)


def _arch_fields(family: str, picked: dict[str, Any]) -> dict[str, Any]:
    """The family's architecture fields from the picks (BNConv's derived stage fields resolved)."""
    fields = {k: v for k, v in picked.items() if k not in STAGE_FIELDS}
    if family == "BNConv" and any(k in picked for k in STAGE_FIELDS):
        count, convs = int(picked["stage_count"]), int(picked["stage_convs"])
        width, growth = float(picked["stage_width"]), float(picked["stage_growth"])
        fields["stages"] = tuple((max(8, int(round(width * growth**i / 8)) * 8),) * convs
                                 for i in range(count))
    return fields


# ---------------------------------------------------------------- reading


def default_space() -> Space:
    return parse(DEFAULT_SPACE, "the default BNConv space")


def read_space(path: Path) -> Space:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--space {path}: no such file; expected a TOML search space ({SHAPE}; "
                         "docs/tune.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--space {path}: cannot read it ({exc}); expected a UTF-8 TOML file") from None
    return parse(text, str(path))


def parse(text: str, source: str) -> Space:
    """A space from TOML; an empty, malformed or unknown field is one UsageError naming it."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML ({exc}); expected {SHAPE}") from None
    if not doc:
        raise UsageError(f"{source}: the space is empty; expected {SHAPE} (docs/tune.md)")
    unknown = sorted(set(doc) - set(SPACE_FIELDS))
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SPACE_FIELDS)}")
    if not isinstance(doc.get("family"), str):
        raise UsageError(f"{source}: family must be a family name (toolkit list), got {doc.get('family')!r}")
    family = get_family(doc["family"])
    arch_table, recipe_table = _table(doc, "architecture", source), _table(doc, "recipe", source)
    allowed = [f.name for f in dataclasses.fields(family.arch)]
    derived = STAGE_FIELDS if family.name == "BNConv" else ()
    _check_fields(source, "architecture", arch_table, [*allowed, *derived], family.name)
    _check_stage_fields(source, arch_table, derived)
    if "epochs" in recipe_table:
        raise UsageError(f"{source}: recipe.epochs is not searched: the search's fidelities set it "
                         "(--rungs); "
                         "remove it")
    _check_fields(source, "recipe", recipe_table, [f for f in recipes.FIELDS if f != "epochs"], "a recipe")
    arch = tuple(_dim(f"architecture.{k}", v, source) for k, v in arch_table.items())
    recipe = tuple(_dim(f"recipe.{k}", v, source, teacher=k == "teacher") for k, v in recipe_table.items())
    space = Space(family.name, arch, recipe, str(doc.get("mixed_precision", "off")), source)
    if not space.searched:
        raise UsageError(f"{source}: nothing to search: every field is fixed; give at least one a list of "
                         "choices or a {low, high} range")
    return space


def _table(doc: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(f"{source}: {key} must be a table ([{key}]), got {value!r}")
    return value


def _check_fields(source: str, where: str, table: dict[str, Any], allowed: list[str], owner: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UsageError(f"{source}: {where} field(s) {', '.join(unknown)} unknown for {owner}; allowed: "
                         f"{', '.join(allowed)}")


def _check_stage_fields(source: str, table: dict[str, Any], derived: tuple[str, ...]) -> None:
    given = [k for k in derived if k in table]
    if given and "stages" in table:
        raise UsageError(f"{source}: give BNConv's stages either as stages or as {', '.join(derived)}, "
                         "not both")
    if given and len(given) != len(derived):
        missing = [k for k in derived if k not in table]
        raise UsageError(f"{source}: the derived stage fields go together; missing: {', '.join(missing)}")


def _dim(name: str, value: Any, source: str, *, teacher: bool = False) -> Dim:
    where = f"{source}: {name}"
    if isinstance(value, dict):
        return _range_or_table(name, value, where, teacher)
    if isinstance(value, list):
        if not value:
            raise UsageError(f"{where}: an empty list of choices; give at least one value")
        values = tuple(_native(v, teacher) for v in value)
        if len(set(map(_key, values))) != len(values):
            raise UsageError(f"{where}: a choice is listed twice in {value!r}")
        return Dim(name, "choice" if len(values) > 1 else "fixed", values)
    return Dim(name, "fixed", (_native(value, teacher),))


def _range_or_table(name: str, value: dict[str, Any], where: str, teacher: bool) -> Dim:
    if set(value) == {"value"}:
        return Dim(name, "fixed", (_native(value["value"], teacher),))
    if set(value) == {"choices"} and isinstance(value["choices"], list):
        return _dim(name, value["choices"], where.rpartition(": ")[0], teacher=teacher)
    unknown = sorted(set(value) - {"low", "high", "step", "log"})
    if unknown or "low" not in value or "high" not in value:
        raise UsageError(f"{where}: a range is {{low, high}} with optional step and log (or {{value = ...}}, "
                         f"{{choices = [...]}}); got {value!r}")
    low, high, step, log = value["low"], value["high"], value.get("step"), bool(value.get("log", False))
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high, step or 1))
    if not numbers or low > high or (step is not None and step <= 0):
        raise UsageError(f"{where}: a range needs numbers with low <= high and a positive step; "
                         f"got {value!r}")
    if log and (step is not None or low <= 0):
        raise UsageError(f"{where}: a log range needs low > 0 and no step; got {value!r}")
    kind = "int" if all(isinstance(v, int) for v in (low, high, step or 1)) else "float"
    return Dim(name, kind, (), float(low), float(high), None if step is None else float(step), log)


def _native(value: Any, teacher: bool) -> Any:
    if teacher and value == NO_TEACHER:
        return None
    return _tuples(value)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
