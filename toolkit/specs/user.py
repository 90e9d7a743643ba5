"""User specs as data: a TOML file of specs in the registered ones' shape.

    [[spec]]
    name = "tiny"
    family = "BNConv"
    mixed_precision = "auto"           # optional: off (the default), bf16, fp16, auto
    [spec.architecture]                # the family's architecture fields (toolkit list --json)
    stem_filters = 16
    stem_stride = 2
    stages = [[32], [64, 64]]
    [spec.recipe]                      # recipe fields (toolkit/specs/recipe.py); the rest keep defaults
    optimizer = "adamw"
    learning_rate = 0.003
    epochs = 10

Which file: `toolkit --specs FILE`, else the TOOLKIT_SPECS variable, else ARTIFACTS/specs.toml when
it exists (`locate`). Each spec is validated exactly as a registered one (Spec and Recipe's own
checks: one line naming the field and the allowed values, exit 2); a user spec cannot take a
registered spec's name (toolkit.specs.registry refuses it). This module parses and writes files;
the registry holds what is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from toolkit.core import artifacts
from toolkit.core.errors import ArtifactError, UsageError
from toolkit.families import get_family
from toolkit.specs import recipe as recipes
from toolkit.specs.spec import Spec

try:  # Python 3.11+; tomli is the same parser for 3.10 (pyproject installs it there)
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SPECS_ENV = "TOOLKIT_SPECS"
DEFAULT_FILE = "specs.toml"
SPEC_FIELDS = ("name", "family", "mixed_precision", "validation_fraction", "architecture", "recipe")
# Names become folders under the artifacts root and file names in records.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SHAPE_HINT = (
    "a TOML file of [[spec]] tables with name, family, [spec.architecture] and [spec.recipe] (docs/specs.md)"
)


def locate(explicit: Path | None, root: Path, *, create: bool = False) -> Path | None:
    """The user spec file: `explicit` (--specs), else $TOOLKIT_SPECS, else ROOT/specs.toml when it
    exists (or, with `create`, where it would be written). A named file that does not exist is a
    usage error unless `create` (toolkit tune writes its front there)."""
    env = os.environ.get(SPECS_ENV)
    if explicit is None and not env:
        default = root / DEFAULT_FILE
        return default if default.is_file() or create else None
    how = "--specs" if explicit is not None else SPECS_ENV
    path = Path(explicit if explicit is not None else env).expanduser().resolve()
    if path.exists() and not path.is_file():
        raise UsageError(f"{how} names {path}, which is a folder; expected {SHAPE_HINT}")
    if not path.exists() and not create:
        raise UsageError(f"{how} names {path}, which does not exist; expected {SHAPE_HINT}. "
                         f"Fix the path, or leave {how} out")
    return path


def read(path: Path) -> list[Spec]:
    """The specs of the file at `path` (validated)."""
    return parse(read_text(path), str(path))


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: spec file not found; expected {SHAPE_HINT}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text file; expected {SHAPE_HINT}") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read the spec file ({exc.strerror}); "
                            "check its permissions") from None


def parse(text: str, source: str) -> list[Spec]:
    """Every spec of a spec file's text, validated; `source` names the file in messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML ({exc}); expected {SHAPE_HINT}") from None
    unknown = sorted(set(doc) - {"spec"})
    if unknown:
        raise UsageError(f"{source}: unknown top-level key(s) {', '.join(unknown)}; expected {SHAPE_HINT}")
    tables = doc.get("spec", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise UsageError(f"{source}: 'spec' must be an array of tables ([[spec]]); expected {SHAPE_HINT}")
    specs: list[Spec] = []
    for number, table in enumerate(tables, 1):
        spec = from_table(table, source=source, where=f"spec {number}")
        if any(s.name == spec.name for s in specs):
            raise UsageError(f"{source}: two specs are named {spec.name!r}; names are unique, rename one")
        specs.append(spec)
    return specs


def from_table(table: dict[str, Any], *, source: str, where: str) -> Spec:
    """One [[spec]] table as a validated Spec (origin "user")."""
    name = table.get("name")
    label = f"{source}: {where}" + (f" ({name!r})" if isinstance(name, str) else "")
    unknown = sorted(set(table) - set(SPEC_FIELDS))
    if unknown:
        raise UsageError(f"{label}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(SPEC_FIELDS)}")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UsageError(f"{label}: name must be letters, digits, '.', '_' or '-' (up to 100, starting "
                         "with a "
                         f"letter or digit), got {name!r}")
    if not isinstance(table.get("family"), str):
        raise UsageError(f"{label}: family must be a family name (toolkit list), got {table.get('family')!r}")
    family = get_family(table["family"])
    arch_table = _subtable(table, "architecture", label)
    recipe_table = _subtable(table, "recipe", label)
    allowed = [f.name for f in dataclasses.fields(family.arch)]
    unknown = sorted(set(arch_table) - set(allowed))
    if unknown:
        raise UsageError(f"{label}: architecture field(s) {', '.join(unknown)} unknown for {family.name}; "
                         f"allowed: {', '.join(allowed)}")
    unknown = sorted(set(recipe_table) - set(recipes.FIELDS))
    if unknown:
        raise UsageError(f"{label}: recipe field(s) {', '.join(unknown)} unknown; allowed: "
                         f"{', '.join(recipes.FIELDS)}")
    try:
        arch = family.arch(**{k: _tuples(v) for k, v in arch_table.items()})
        recipe = recipes.Recipe(**recipe_table)
        own = {k: table[k] for k in ("mixed_precision", "validation_fraction") if k in table}
        return Spec(name=name, family=family.name, arch=arch, recipe=recipe, origin="user", source=source,
                    **own)
    except UsageError as exc:
        raise UsageError(f"{label}: {exc.message}") from None
    except (TypeError, ValueError) as exc:  # a value of the wrong type that a check compared
        raise UsageError(f"{label}: a value has the wrong type ({exc}); expected {SHAPE_HINT}") from None


def _subtable(table: dict[str, Any], key: str, label: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(f"{label}: {key} must be a table ([spec.{key}]), got {value!r}")
    return value


def _tuples(value: Any) -> Any:
    """TOML arrays as the tuples the architecture dataclasses hold (they are hashed and compared)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# ---------------------------------------------------------------- writing


def to_table(spec: Spec) -> dict[str, Any]:
    """What a spec file holds of a spec: the fields that make it (recipe fields at their defaults
    left out), in the order `from_table` reads them."""
    table: dict[str, Any] = {"name": spec.name, "family": spec.family}
    if spec.mixed_precision != "off":
        table["mixed_precision"] = spec.mixed_precision
    if spec.validation_fraction != 0.1:
        table["validation_fraction"] = spec.validation_fraction
    table["architecture"] = dataclasses.asdict(spec.arch)
    table["recipe"] = spec.recipe.changed()
    return table


def to_toml(spec: Spec, comments: Sequence[str] = ()) -> str:
    """One [[spec]] block, with `comments` as # lines above it."""
    table = to_table(spec)
    lines = [f"# {' '.join(str(c).split())}" for c in comments] + ["[[spec]]"]
    lines += [f"{k} = {_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key in ("architecture", "recipe"):
        lines.append(f"[spec.{key}]")
        lines += [f"{k} = {_value(v)}" for k, v in table[key].items() if v is not None]
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are valid in a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def append(path: Path, specs: Iterable[tuple[Spec, Sequence[str]]], *,
           reserved: Iterable[str] = ()) -> list[str]:
    """Add specs (each with its comment lines) to the spec file at `path` (created if missing),
    under its lock, as one atomic replacement: the whole new text is parsed and validated before it
    replaces the file, so the file is never half-written or invalid. A spec whose name the file
    already holds with the same content is left as it is; with other content it is an error.
    `reserved`: names the file must not take (the registered specs'). Returns the names added."""
    with artifacts.exclusive_lock(path.with_name(f".{path.name}.lock"), what=f"spec file {path}", wait=True):
        text = read_text(path) if path.exists() else ""
        present = {s.name: s for s in parse(text, str(path))} if text.strip() else {}
        blocks, added = [], []
        for spec, comments in specs:
            if spec.name in present:
                if to_table(present[spec.name]) != to_table(spec):
                    raise UsageError(f"{path}: already holds another spec named {spec.name!r}; rename one")
                continue
            blocks.append(to_toml(spec, comments))
            added.append(spec.name)
        if not blocks:
            return []
        new = text + ("\n" if text and not text.endswith("\n") else "") + ("\n" if text.strip() else "")
        new += "\n".join(blocks)
        taken = sorted(set(reserved) & {s.name for s in parse(new, str(path))})
        if taken:
            raise UsageError(f"{path}: {', '.join(taken)} would shadow registered specs; rename them")
        artifacts.write_text(path, new)
    return added
