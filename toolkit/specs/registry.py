"""The registry of specs, read by name: the study's 17 (toolkit.specs.study) and the new ones
(toolkit.specs.new), plus any registered from outside the package."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Iterable
from typing import Any

from toolkit.core.errors import UsageError
from toolkit.specs import recipe as recipes
from toolkit.specs.new import NEW_SPECS
from toolkit.specs.spec import Spec
from toolkit.specs.study import STUDY_SPECS

SPECS: dict[str, Spec] = {spec.name: spec for spec in (*STUDY_SPECS, *NEW_SPECS)}
DEFAULT_SPEC = "CNN_1L_Dropout_Exp6"


def get_spec(name: str) -> Spec:
    """Look a spec up by its exact name; an unknown name lists the closest ones."""
    try:
        return SPECS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), SPECS, n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "run `toolkit list` to see them all"
        raise UsageError(f"unknown experiment spec {name!r}; {hint}") from None


def study_specs() -> list[Spec]:
    """The seed study's 17 specs, in its order."""
    return [s for s in SPECS.values() if s.study]


def register_spec(spec: Spec) -> Spec:
    """Add a spec (e.g. of a family registered from outside the package); names are unique."""
    if spec.name in SPECS:
        raise UsageError(f"a spec named {spec.name!r} is already registered")
    SPECS[spec.name] = spec
    return spec


def unregister_spec(name: str) -> None:
    SPECS.pop(get_spec(name).name)


def match_specs(patterns: Iterable[str] | None) -> list[Spec]:
    """Specs whose names match any glob pattern (exact names too), in registry order."""
    patterns = list(patterns or [])
    if not patterns:
        return list(SPECS.values())
    chosen: list[Spec] = []
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            spec = get_spec(pattern)
            if spec not in chosen:
                chosen.append(spec)
            continue
        hits = [s for s in SPECS.values() if fnmatch.fnmatchcase(s.name, pattern)]
        if not hits:
            raise UsageError(f"pattern {pattern!r} matches no spec; run `toolkit list` for names")
        chosen.extend(s for s in hits if s not in chosen)
    return chosen


def with_overrides(spec: Spec, **overrides: Any) -> Spec:
    """A copy of `spec` with some fields replaced, each routed to where it lives (the recipe, the
    architecture or the spec itself); None means "keep the spec's value"."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    arch_fields = {f.name for f in dataclasses.fields(spec.arch)}
    own = {"validation_fraction", "mixed_precision"}
    unknown = sorted(set(changes) - set(recipes.FIELDS) - arch_fields - own)
    if unknown:
        valid = sorted(set(recipes.FIELDS) | arch_fields | own)
        raise UsageError(f"unknown spec field(s) {unknown}; valid: {', '.join(valid)}")
    if not changes:
        return spec
    recipe = recipes.replace(spec.recipe, **{k: v for k, v in changes.items() if k in recipes.FIELDS})
    arch_changes = {k: v for k, v in changes.items() if k in arch_fields and k not in recipes.FIELDS}
    arch = dataclasses.replace(spec.arch, **arch_changes) if arch_changes else spec.arch
    return dataclasses.replace(spec, recipe=recipe, arch=arch,
                               **{k: v for k, v in changes.items() if k in own})


def run_variant(spec: Spec) -> str | None:
    """A tag for a run whose recipe differs from its registered spec's (None: the spec's own),
    so a trial recipe never replaces the spec's own run of the same seed and epochs."""
    registered = SPECS.get(spec.name)
    return None if registered is None else recipes.variant_id(spec.recipe, registered.recipe)
