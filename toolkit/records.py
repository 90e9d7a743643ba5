"""The rules every record that crosses stages follows (exports.json, parity.json, the files under
artifacts/bench/). Each record is a dataclass with exactly one reader and one writer, next to
its owner (toolkit.export.record, toolkit.parity, toolkit.benchmark.results); this module holds
only what they share:

- `schema_version`: a file without one is version 1 (what the toolkit wrote before versions
  existed, still read); a version newer than the reader knows is refused with an ArtifactError
  (exit 4) naming the file and saying to upgrade the toolkit. Older versions are read.
- a required field that is missing (or of the wrong type) is an ArtifactError naming the file
  and the field; nobody guesses alternative key names.
- `kind` (files under artifacts/bench/): "inference" today; "training", "memory", "loadtest"
  are coming. Readers skip kinds they do not own; a file without `kind` is "inference".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.errors import ArtifactError, NewerRecordError

VERSION_KEY = "schema_version"
KIND_KEY = "kind"
UPGRADE = "pip install -U fashion-mnist-toolkit"


def load(path: Path, *, what: str, reader_version: int, fix: str) -> dict[str, Any]:
    """The JSON object in `path`, its schema version checked. `fix` says how to recreate it."""
    from toolkit.artifacts import read_json

    doc = read_json(path, what=what, fix=fix)
    if not isinstance(doc, dict):
        raise ArtifactError(f"{path}: {what} is not a JSON object. {fix}")
    check_version(doc, path=path, what=what, reader_version=reader_version)
    return doc


def check_version(doc: dict[str, Any], *, path: Path, what: str, reader_version: int) -> int:
    version = doc.get(VERSION_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{path}: {what} has schema_version {version!r}, expected a positive integer. "
                            "Delete the file and rerun the command that writes it")
    if version > reader_version:
        raise NewerRecordError(
            f"{path}: {what} has schema_version {version}, newer than this toolkit reads "
            f"({reader_version}); it was written by a newer toolkit. Upgrade this one ({UPGRADE})"
        )
    return version


def require(doc: dict[str, Any], name: str, types: type | tuple[type, ...], *, path: Path, what: str) -> Any:
    """doc[name], which must exist and be of `types`; else an ArtifactError naming file and field."""
    if name not in doc:
        raise ArtifactError(f"{path}: {what} has no {name!r} field. "
                            "Delete the file and rerun the command that writes it")
    value = doc[name]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise ArtifactError(f"{path}: {what} field {name!r} is {type(value).__name__}, expected "
                            f"{' or '.join(t.__name__ for t in _as_tuple(types))}. "
                            "Delete the file and rerun the command that writes it")
    return value


def optional(doc: dict[str, Any], name: str, types: type | tuple[type, ...], *, path: Path, what: str,
             default: Any = None) -> Any:
    """doc[name] when present and not null (checked like `require`), else `default`."""
    if doc.get(name) is None:
        return default
    return require(doc, name, types, path=path, what=what)


class Entry:
    """One JSON object of a record, read field by field; every check names the file and field."""

    def __init__(self, doc: Any, *, path: Path, what: str, fix: str) -> None:
        if not isinstance(doc, dict):
            raise ArtifactError(f"{path}: a {what} is not an object. {fix}")
        self.doc, self.path, self.what = doc, path, what

    def req(self, name: str, types: type | tuple[type, ...]) -> Any:
        return require(self.doc, name, types, path=self.path, what=self.what)

    def opt(self, name: str, types: type | tuple[type, ...], default: Any = None) -> Any:
        return optional(self.doc, name, types, path=self.path, what=self.what, default=default)


def kind_of(doc: dict[str, Any], *, default: str) -> str:
    kind = doc.get(KIND_KEY, default)
    return kind if isinstance(kind, str) else default


def documents_of_kind(folder: Path, kind: str, *, what: str, reader_version: int, fix: str,
                      default_kind: str = "inference") -> list[tuple[Path, dict[str, Any]]]:
    """(path, document) of every JSON file in `folder` whose kind is `kind`, oldest name first,
    each version-checked; files of other kinds are skipped (their owners read them)."""
    from toolkit.artifacts import read_json

    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        doc = read_json(path, what=what, fix=fix)
        if isinstance(doc, dict) and kind_of(doc, default=default_kind) == kind:
            check_version(doc, path=path, what=what, reader_version=reader_version)
            out.append((path, doc))
    return out


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)
