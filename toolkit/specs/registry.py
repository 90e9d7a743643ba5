"""The registry of specs, read by name: the study's 17 (toolkit.specs.study) and the new ones
(toolkit.specs.new), plus any registered from outside the package and the user specs of one spec
file (toolkit.specs.user).

User specs: `activate` (the CLI boundary) loads the file `--specs`, TOOLKIT_SPECS or
ARTIFACTS/specs.toml names and puts its absolute path in TOOLKIT_SPECS, so every process started
from here reads the same file; every lookup first follows that variable (a worker process loads
the file on its first lookup; a file rewritten since, e.g. by `toolkit tune`, is read again).
A Ray task carries the file's text instead (`use_spec_text`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from toolkit.core.errors import UsageError
from toolkit.specs import recipe as recipes
from toolkit.specs import user
from toolkit.specs.new import NEW_SPECS
from toolkit.specs.spec import Spec
from toolkit.specs.study import STUDY_SPECS

SPECS: dict[str, Spec] = {spec.name: spec for spec in (*STUDY_SPECS, *NEW_SPECS)}
DEFAULT_SPEC = "CNN_1L_Dropout_Exp6"
# What the user specs in SPECS came from: (path or text digest, file stamp), and their names.
_user: dict[str, Any] = {"key": None, "names": (), "path": None}
_lock = threading.RLock()


def get_spec(name: str) -> Spec:
    """Look a spec up by its exact name; an unknown name lists the closest ones."""
    _follow_env()
    try:
        return SPECS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), SPECS, n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "run `toolkit list` to see them all"
        raise UsageError(f"unknown experiment spec {name!r}; {hint}") from None


def all_specs() -> list[Spec]:
    """Every spec, in registry order (the user specs last)."""
    _follow_env()
    return list(SPECS.values())


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
        return all_specs()
    chosen: list[Spec] = []
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            spec = get_spec(pattern)
            if spec not in chosen:
                chosen.append(spec)
            continue
        hits = [s for s in all_specs() if fnmatch.fnmatchcase(s.name, pattern)]
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
    _follow_env()
    registered = SPECS.get(spec.name)
    return None if registered is None else recipes.variant_id(spec.recipe, registered.recipe)


# ---------------------------------------------------------------- user specs


def user_spec_file() -> Path | None:
    """The spec file whose specs are loaded (None: none, or text from a Ray task)."""
    _follow_env()
    return _user["path"]


def use_spec_file(path: Path | None, *, export_env: bool = False) -> list[Spec]:
    """Make the specs of the file at `path` the user specs (None: none), replacing those of any
    earlier file; with `export_env`, name it in TOOLKIT_SPECS for the processes started from here."""
    with _lock:
        if path is None:
            _install([], key=None, path=None)
            return []
        path = Path(path).resolve()
        specs = user.read(path)
        _install(specs, key=_stamp(path), path=path)
        if export_env:
            os.environ[user.SPECS_ENV] = str(path)
        return specs


def use_spec_text(text: str, source: str) -> list[Spec]:
    """The user specs of a spec file's text (a Ray task carries the text: its node may not see the file)."""
    with _lock:
        key = ("text", hashlib.sha256(text.encode()).hexdigest())
        if _user["key"] == key:
            return [SPECS[n] for n in _user["names"]]
        specs = user.parse(text, source)
        _install(specs, key=key, path=None)
        return specs


def activate(explicit: Path | None, root: Path, *, create: bool = False) -> Path | None:
    """Load the user spec file the CLI names (see toolkit.specs.user.locate) and export its path
    to child processes; returns the file (with `create`, possibly one not written yet)."""
    path = user.locate(explicit, root, create=create)
    _user["target"] = path
    if path is not None and path.is_file():
        use_spec_file(path, export_env=True)
    return path


@contextlib.contextmanager
def spec_file_scope(explicit: Path | None, root: Path, *, create: bool = False) -> Iterator[Path | None]:
    """`activate` for one command; afterwards TOOLKIT_SPECS and the user specs are as before (a
    test runs many commands in one process)."""
    before = os.environ.get(user.SPECS_ENV)
    try:
        yield activate(explicit, root, create=create)
    finally:
        if before is None:
            os.environ.pop(user.SPECS_ENV, None)
        else:
            os.environ[user.SPECS_ENV] = before
        use_spec_file(None)
        _user["target"] = None


def spec_file_target() -> Path | None:
    """The spec file the command was given (--specs, TOOLKIT_SPECS or ARTIFACTS/specs.toml),
    existing or not: where `toolkit tune` writes its front."""
    return _user.get("target")


def _stamp(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_mtime_ns, st.st_size)


def _follow_env() -> None:
    """Load (or reload) the file TOOLKIT_SPECS names when it is not the one loaded or has changed."""
    named = os.environ.get(user.SPECS_ENV)
    if not named:
        return
    path = Path(named).expanduser().resolve()
    with _lock:
        if _user["key"] == _stamp(path) and _user["key"] is not None:
            return
        if not path.is_file():
            raise UsageError(f"{user.SPECS_ENV} names {path}, which is not a file; expected "
                             f"{user.SHAPE_HINT}")
        use_spec_file(path)


def _install(specs: list[Spec], *, key: Any, path: Path | None) -> None:
    """Replace the user specs in SPECS; nothing changes when one would shadow a registered spec."""
    registered = {n for n in SPECS if n not in _user["names"]}
    shadows = [s for s in specs if s.name in registered]
    if shadows:
        spec = shadows[0]
        origin = SPECS[spec.name].origin
        raise UsageError(f"{spec.source}: spec {spec.name!r} shadows the registered spec of that name "
                         f"({origin}); "
                         "a user spec needs a name of its own: rename it")
    for name in _user["names"]:
        SPECS.pop(name, None)
    SPECS.update({s.name: s for s in specs})
    _user.update(key=key, names=tuple(s.name for s in specs), path=path)
