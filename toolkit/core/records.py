"""The rules every record that crosses stages follows (exports.json, parity.json, the pick record,
the files under artifacts/bench/), and the one envelope of the files under artifacts/bench/.
Each record is a dataclass with exactly one reader and one writer, next to its owner
(toolkit.export.record, toolkit.export.parity, toolkit.benchmark.*, toolkit.core.loadtest_record,
toolkit.core.pick_record); this module holds only what they share:

- `schema_version`: a file without one is version 1 (what the toolkit wrote before versions
  existed, still read); a version newer than the reader knows is refused with an ArtifactError
  (exit 4) naming the file and saying to upgrade the toolkit. Older versions are read.
- a required field that is missing (or of the wrong type) is an ArtifactError naming the file
  and the field; nobody guesses alternative key names.
- the bench envelope: every file under artifacts/bench/ is one JSON object with `kind`
  ("inference", "memory", "training", "loadtest"; a file without one is "inference", what the
  toolkit wrote before kinds), `schema_version`, `source`, `written_at`, `machine` and
  `versions`, beside the fields its kind owns. `write_bench_file` is its one writer (one naming
  scheme, `<UTC time>-<kind>-<source>-<pid>.json`); `read_bench_files` its one reader, which
  selects files by their `kind`, never by their name, so files written under older names
  (`<time>-cli-<pid>.json`, `*-memory.json`, `*-loadtest-*.json`) still read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from toolkit.core import artifacts
from toolkit.core.errors import ArtifactError, NewerRecordError

VERSION_KEY = "schema_version"
KIND_KEY = "kind"
UPGRADE = "pip install -U fashion-mnist-toolkit"
BENCH_KINDS = ("inference", "memory", "training", "loadtest", "time-to-accuracy")
DEFAULT_KIND = "inference"  # bench files written before kinds existed
ENVELOPE = (VERSION_KEY, KIND_KEY, "source", "written_at", "machine", "versions")


def load(path: Path, *, what: str, reader_version: int, fix: str) -> dict[str, Any]:
    """The JSON object in `path`, its schema version checked. `fix` says how to recreate it."""
    doc = artifacts.read_json(path, what=what, fix=fix)
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

    def relpath(self, name: str, *, required: bool = True) -> str | None:
        """A field naming a file inside the record's own folder: relative, without '..'."""
        value = self.req(name, str) if required else self.opt(name, str)
        return None if value is None else inside(value, path=self.path, what=f"{self.what} field {name!r}")

    def key(self, name: str) -> str:
        """A field used to name files (an export key, a parity row): letters, digits, . _ - @ +
        ('+' joins the precisions of a mixed row: onnx-int8@openvino-int8+fp32)."""
        value = self.req(name, str)
        if not SAFE_NAME.fullmatch(value) or ".." in value:
            raise ArtifactError(f"{self.path}: {self.what} field {name!r} is {value!r}, not a name the "
                                "toolkit writes (letters, digits, '.', '_', '-', '@', '+'). Delete the file "
                                "and rerun the command that writes it")
        return value


SAFE_NAME = re.compile(r"[A-Za-z0-9._@+-]+")


def inside(value: str, *, path: Path, what: str) -> str:
    """`value` if it names a file under the record's folder; an ArtifactError otherwise (records
    are data: a path in one must never reach outside the artifacts it describes)."""
    candidate = PurePosixPath(value)
    if not value or candidate.is_absolute() or ".." in candidate.parts or "\\" in value:
        raise ArtifactError(f"{path}: {what} is {value!r}, which points outside the spec's folder; records "
                            "name files inside it. Delete the file and rerun the command that writes it")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def now() -> str:
    """The time records are stamped with: UTC, to the second, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the bench envelope


@dataclass
class BenchFile:
    """One file under artifacts/bench/: the envelope's fields and its kind's own (`body`)."""

    kind: str
    schema_version: int
    source: str
    written_at: str | None
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def entry(self, *, what: str, fix: str) -> Entry:
        """The kind's own fields, read with the same checks as every record field."""
        return Entry(self.body, path=self.path or Path("<bench file>"), what=what, fix=fix)


def bench_file_name(kind: str, source: str, pid: int, when: datetime | None = None) -> str:
    """The one naming scheme of bench files: `<UTC time>-<kind>-<source>-<pid>.json`."""
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{kind}-{source}-{pid}.json"


def write_bench_file(root: Path | None, *, kind: str, schema_version: int, source: str,
                     body: dict[str, Any], machine: dict[str, Any] | None = None,
                     versions: dict[str, str] | None = None, written_at: str | None = None) -> Path:
    """Write one bench file (atomically) under ROOT/bench/ and return its path. `machine` and
    `versions` default to this machine's facts (toolkit.core.machine), `written_at` to now."""
    import os

    from toolkit.core.machine import machine_info, package_versions

    if kind not in BENCH_KINDS:
        raise ValueError(f"unknown bench kind {kind!r}; known: {', '.join(BENCH_KINDS)}")
    clash = set(body) & set(ENVELOPE)
    if clash:
        raise ValueError(f"bench file body repeats envelope fields {sorted(clash)}")
    folder = artifacts.bench_dir(root)
    name = bench_file_name(kind, source, os.getpid())
    path, n = folder / name, 1
    while path.exists():  # two files of one kind in one second from one process
        n += 1
        path = folder / name.replace(".json", f"-{n}.json")
    artifacts.write_json(path, {
        VERSION_KEY: schema_version, KIND_KEY: kind, "source": source, "written_at": written_at or now(),
        "machine": machine if machine is not None else machine_info(),
        "versions": versions if versions is not None else package_versions(),
        **body,
    })
    return path


def kind_of(doc: dict[str, Any]) -> str | None:
    """A bench file's kind: "inference" when it has none (files before kinds), None when the
    field is there but not a string (a damaged file, named by the reader)."""
    kind = doc.get(KIND_KEY, DEFAULT_KIND)
    return kind if isinstance(kind, str) else None


# The command that writes (and so rewrites) each kind of bench file.
REWRITTEN_BY = {"inference": "toolkit bench", "memory": "toolkit bench",
                "training": "pytest bench/ --benchmark-only", "loadtest": "toolkit loadtest",
                "time-to-accuracy": "toolkit bench --kind time-to-accuracy"}


@dataclass(frozen=True)
class SkippedFile:
    """A bench file a lenient reader left out, and why (the report lists them and exits 7)."""

    path: Path
    reason: str

    def line(self) -> str:
        return f"{self.path.name}: {self.reason}"


def _file_kind(path: Path, doc: Any = None) -> str | None:
    """The kind a bench file is of: its `kind` field, else the one its name carries."""
    if isinstance(doc, dict) and isinstance(doc.get(KIND_KEY), str):
        return doc[KIND_KEY]
    return next((k for k in BENCH_KINDS if f"-{k}-" in path.name or path.name.startswith(f"{k}-")), None)


def _fix_for(path: Path, doc: Any = None) -> str:
    kind = _file_kind(path, doc)
    if kind in REWRITTEN_BY:
        return f"Delete it and rerun `{REWRITTEN_BY[kind]}` (which writes {kind} files)"
    return "Delete it or move it out of the bench folder (no toolkit command writes it)"


def _read_bench_file(path: Path, kind: str, *, reader_version: int, what: str) -> BenchFile | None:
    """The file as a BenchFile if it is of `kind`; None if it is another known kind's."""
    doc = artifacts.read_json(path, what="bench file", fix=_fix_for(path))
    fix = _fix_for(path, doc)
    if not isinstance(doc, dict):
        raise ArtifactError(f"{path}: a bench file is not a JSON object. {fix}")
    found = kind_of(doc)
    if found is None or found not in BENCH_KINDS:
        raise ArtifactError(f"{path}: its 'kind' is {doc.get(KIND_KEY)!r}, expected one of "
                            f"{', '.join(BENCH_KINDS)}. {fix}")
    if found != kind:
        return None
    version = check_version(doc, path=path, what=what, reader_version=reader_version)
    return BenchFile(
        kind=kind, schema_version=version,
        source=optional(doc, "source", str, path=path, what=what, default="unknown"),
        written_at=optional(doc, "written_at", str, path=path, what=what),
        machine=optional(doc, "machine", dict, path=path, what=what, default={}),
        versions=optional(doc, "versions", dict, path=path, what=what, default={}),
        body={k: v for k, v in doc.items() if k not in ENVELOPE}, path=path)


def skip_or_raise(skipped: list[SkippedFile] | None, path: Path, exc: ArtifactError) -> None:
    """Lenient readers (`skipped` given) note a bad file once and go on; strict ones raise."""
    if skipped is None:
        raise exc
    if all(s.path != path for s in skipped):
        skipped.append(SkippedFile(path, exc.message.removeprefix(f"{path}: ")))


def read_bench_files(root: Path | None, kind: str, *, reader_version: int, what: str,
                     skipped: list[SkippedFile] | None = None) -> list[BenchFile]:
    """Every file of `kind` under ROOT/bench/, oldest first (by `written_at`, then name), each
    version-checked. Files of other kinds are left to their owners. A damaged file, one of an
    unknown kind or a newer schema is an ArtifactError naming it and the command that rewrites
    it; with `skipped`, it is noted there instead and the others are read."""
    folder = artifacts.bench_dir(root)
    out: list[BenchFile] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            file = _read_bench_file(path, kind, reader_version=reader_version, what=what)
        except ArtifactError as exc:
            skip_or_raise(skipped, path, exc)
            continue
        if file is not None:
            out.append(file)
    out.sort(key=lambda f: (f.written_at or "", str(f.path)))
    return out


def read_result_files(root: str | Path | None, kind: str, *, reader_version: int, what: str, parse: Any,
                      skipped: list[SkippedFile] | None = None) -> list[tuple[BenchFile, list[Any]]]:
    """Every file of `kind` whose body lists its measurements under `results` (the inference,
    memory and training kinds), each entry read by `parse(doc, path=...)`, oldest file first."""
    out = []
    for file in read_bench_files(root, kind, reader_version=reader_version, what=what, skipped=skipped):
        try:
            entry = file.entry(what=what, fix=_fix_for(file.path or Path(), {KIND_KEY: kind}))
            out.append((file, [parse(e, path=entry.path) for e in entry.req("results", list)]))
        except ArtifactError as exc:
            skip_or_raise(skipped, file.path or Path(), exc)
    return out
