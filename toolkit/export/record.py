"""exports.json: the typed, versioned record of a spec's exports, with its one reader and writer.

    {"schema_version": 3, "spec": NAME, "source_model_sha256": ..., "updated_at": ...,
     "exports": [ExportEntry, ...]}

Written by `toolkit export` (toolkit.export.pipeline) after every export and by parity (each
entry's `parity` summary); read by parity, the benchmarks and the report, always through
`read_exports`, never by guessing keys.

Versions: 3 keys parity by row (a file on a runtime at the precision it computes,
toolkit.export.registry.row_name): `parity` stays the file's primary row (its first runtime), and
`rows` holds the others (e.g. `tflite-int8io@tflm`), with `arena` (TFLM's measured arena of a
full-integer file) and `files` (a multi-file export's files, each with its sha256); 2 adds
`sha256` to each parity summary (the file parity checked); 1 (no schema_version) is read as if
parity had checked the file the entry names. Versions 1 and 2 read as having no other rows. A parity summary
applies only to the file it checked: `ExportEntry.parity_state(file_sha)` says "stale" when the
file on disk is another one (e.g. an export was killed after replacing its file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit.core import artifacts, records
from toolkit.core.artifacts import SpecArtifacts

SCHEMA_VERSION = 3
WHAT = "exports list"
_FIX = "Delete the file and rerun the command that writes it"
EXPORTED, FAILED = "exported", "failed"
NOT_RUN, STALE = "not run", "stale"
# Summary fields that are numbers (None until parity ran).
_NUMBERS = ("agreement", "max_abs_diff", "mean_abs_diff", "p99_abs_diff", "test_accuracy",
            "keras_accuracy", "accuracy_delta_pp")


@dataclass
class ParitySummary:
    """What exports.json keeps of an export's parity result (parity.json keeps all of it)."""

    status: str  # "pass" | "fail" | "not run"
    sha256: str | None = None  # of the file parity checked; None in version-1 records
    failures: list[str] = field(default_factory=list)
    agreement: float | None = None
    flipped: int | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    p99_abs_diff: float | None = None
    test_accuracy: float | None = None
    keras_accuracy: float | None = None
    accuracy_delta_pp: float | None = None
    images: int = 0
    # Added without a version bump (absent in older records, ignored by older readers):
    accuracy_ci: list[float] | None = None  # 95% Wilson interval of test_accuracy
    mcnemar_p: float | None = None  # exact McNemar test against Keras on the same images
    discordant: list[int] | None = None  # [Keras right & export wrong, export right & Keras wrong]
    # Version 3 (rows other than a file's primary one):
    runtime: str | None = None  # None: the file's primary runtime
    computes: str | None = None  # the precision the runtime computes (None: the file's own)
    host_ms_per_image: float | None = None  # a host-only runtime's time (TFLM): never a device's
    wall_seconds: float | None = None  # the test images on this runtime
    workers: int | None = None  # processes the images were spread over
    parallel_efficiency: float | None = None  # busy seconds / (workers x wall)
    differing_from_primary: int | None = None  # top-1 differing from the primary row, same file

    ROW_FIELDS = ("runtime", "computes", "host_ms_per_image", "wall_seconds", "workers",
                  "parallel_efficiency",
                  "differing_from_primary")

    @property
    def passed(self) -> bool | None:
        return None if self.status == NOT_RUN else self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        if self.status == NOT_RUN:
            return {"status": NOT_RUN, "passed": None}
        out = {"status": self.status, "passed": self.passed, "failures": self.failures,
               "agreement": self.agreement, "flipped": self.flipped, "max_abs_diff": self.max_abs_diff,
               "mean_abs_diff": self.mean_abs_diff, "p99_abs_diff": self.p99_abs_diff,
               "test_accuracy": self.test_accuracy, "keras_accuracy": self.keras_accuracy,
               "accuracy_delta_pp": self.accuracy_delta_pp, "images": self.images}
        for name in ("accuracy_ci", "mcnemar_p", "discordant", *self.ROW_FIELDS):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return {**out, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path) -> ParitySummary:
        entry = records.Entry(doc, path=path, what="exports list parity summary", fix=_FIX)
        opt = entry.opt
        return cls(
            status=entry.req("status", str),
            sha256=opt("sha256", str),
            failures=list(opt("failures", list, [])),
            flipped=opt("flipped", int),
            images=opt("images", int, 0),
            accuracy_ci=opt("accuracy_ci", list), mcnemar_p=opt("mcnemar_p", (int, float)),
            discordant=opt("discordant", list), runtime=opt("runtime", str), computes=opt("computes", str),
            host_ms_per_image=opt("host_ms_per_image", (int, float)),
            wall_seconds=opt("wall_seconds", (int, float)), workers=opt("workers", int),
            parallel_efficiency=opt("parallel_efficiency", (int, float)),
            differing_from_primary=opt("differing_from_primary", int),
            **{name: opt(name, (int, float)) for name in _NUMBERS},
        )

    def state(self, file_sha: str | None, entry_sha: str | None = None) -> str:
        """"pass" / "fail" / "not run" for the file whose sha256 is `file_sha`, or "stale" when
        this row checked another file (`entry_sha`: what a version-1 record's file was)."""
        if self.status == NOT_RUN:
            return NOT_RUN
        checked = self.sha256 or entry_sha
        return self.status if checked is not None and checked == file_sha else STALE


@dataclass
class ExportEntry:
    key: str  # "onnx-int8", the registry key
    format: str
    precision: str
    path: str  # relative to the spec's folder
    status: str  # "exported" | "failed"
    runtimes: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    source_model_sha256: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    exported_at: str | None = None
    error: str | None = None
    size_bytes: int | None = None
    # TFLite files: the toolkit's estimate of the tensor arena TFLM needs (activations + persistent
    # data, toolkit.runtimes.tflite_info), made at export. None for other formats.
    arena_bytes: int | None = None
    sha256: str | None = None  # of the exported file, when it was written
    export_seconds: float | None = None
    parity: ParitySummary | None = None  # the primary row; None: parity never ran on this entry
    rows: dict[str, ParitySummary] = field(default_factory=dict)  # the other rows, by row name
    # Full-integer TFLite files: the arena TFLM measured (toolkit.runtimes.tflm.Arena.to_dict(),
    # with the sha256 of the file it measured).
    arena: dict[str, Any] | None = None
    # A multi-file export (the C source): each file with its size and sha256; `path` is the first.
    files: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what the exporter reported (converter, ops...)

    @property
    def exported(self) -> bool:
        return self.status == EXPORTED

    def parity_state(self, file_sha: str | None) -> str:
        """"pass" / "fail" / "not run" for the file whose sha256 is `file_sha`, or "stale" when
        parity checked another file than the one there now."""
        if self.parity is None or self.parity.status == NOT_RUN:
            return NOT_RUN
        return self.parity.state(file_sha, self.sha256)  # version 1: the file the entry names

    def row_state(self, row: str, file_sha: str | None) -> str:
        """The state of one row (the primary row under the export's own key)."""
        if row == self.key:
            return self.parity_state(file_sha)
        summary = self.rows.get(row)
        return NOT_RUN if summary is None else summary.state(file_sha)

    def runtime_row(self, runtime: str) -> str | None:
        """The name of this export's parity row on `runtime`: the export key on its primary
        runtime (the first it lists), else the row that runtime wrote (None: it never ran here)."""
        from toolkit.export.registry import FORMATS

        listed = self.runtimes or (list(FORMATS[self.key].runtimes) if self.key in FORMATS else [])
        if not listed or runtime == listed[0]:
            return self.key
        return next((name for name, summary in self.rows.items() if summary.runtime == runtime), None)

    def runtime_state(self, runtime: str, file_sha: str | None) -> str:
        """The parity state of this file on `runtime` (its own row's; "not run" without one)."""
        row = self.runtime_row(runtime)
        return NOT_RUN if row is None else self.row_state(row, file_sha)

    def measured_arena(self, file_sha: str | None) -> dict[str, Any] | None:
        """TFLM's measured arena, if it measured the file whose sha256 is `file_sha`."""
        if self.arena is None or file_sha is None or self.arena.get("sha256") != file_sha:
            return None
        return self.arena

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key, "format": self.format, "precision": self.precision, "path": self.path,
            "runtimes": self.runtimes, "devices": self.devices,
            "source_model_sha256": self.source_model_sha256, "settings": self.settings,
            "calibration": self.calibration, "exported_at": self.exported_at, "status": self.status,
            "error": self.error, "size_bytes": self.size_bytes, "sha256": self.sha256,
        }
        if self.arena_bytes is not None:
            out["arena_bytes"] = self.arena_bytes
        if self.export_seconds is not None:
            out["export_seconds"] = self.export_seconds
        out["parity"] = (self.parity or ParitySummary(NOT_RUN)).to_dict()
        if self.rows:
            out["rows"] = {name: summary.to_dict() for name, summary in self.rows.items()}
        if self.arena is not None:
            out["arena"] = self.arena
        if self.files:
            out["files"] = self.files
        return {**out, **self.facts}

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path) -> ExportEntry:
        entry = records.Entry(doc, path=path, what="exports list entry", fix=_FIX)
        req, opt = entry.req, entry.opt
        known = {"key", "format", "precision", "path", "status", "runtimes", "devices",
                 "source_model_sha256", "settings", "calibration", "exported_at", "error",
                 "size_bytes", "arena_bytes", "sha256", "export_seconds", "parity", "rows", "arena", "files"}
        return cls(
            key=entry.key("key"), format=req("format", str), precision=req("precision", str),
            path=entry.relpath("path"), status=req("status", str),
            runtimes=list(opt("runtimes", list, [])), devices=list(opt("devices", list, [])),
            source_model_sha256=opt("source_model_sha256", str), settings=opt("settings", dict, {}),
            calibration=opt("calibration", dict), exported_at=opt("exported_at", str),
            error=opt("error", str), size_bytes=opt("size_bytes", int), sha256=opt("sha256", str),
            arena_bytes=opt("arena_bytes", int),
            export_seconds=opt("export_seconds", (int, float)),
            parity=None if doc.get("parity") is None else ParitySummary.from_dict(doc["parity"], path=path),
            rows={name: ParitySummary.from_dict(s, path=path) for name, s in opt("rows", dict, {}).items()},
            arena=opt("arena", dict), files=_files(opt("files", list, []), path=path),
            facts={k: v for k, v in doc.items() if k not in known},
        )


def _files(docs: list, *, path: Path) -> list[dict[str, Any]]:
    """A multi-file export's files, each path confined to the spec's folder."""
    out = []
    for doc in docs:
        entry = records.Entry(doc, path=path, what="exports list file", fix=_FIX)
        out.append({**doc, "path": entry.relpath("path")})
    return out


@dataclass
class ExportsRecord:
    spec: str
    source_model_sha256: str | None = None
    exports: list[ExportEntry] = field(default_factory=list)
    updated_at: str | None = None

    def by_key(self) -> dict[str, ExportEntry]:
        return {e.key: e for e in self.exports}


def read_exports(arts: SpecArtifacts) -> ExportsRecord:
    """The spec's exports.json; an empty record when there is none yet."""
    path = arts.exports_json
    if not path.is_file():
        return ExportsRecord(arts.name)
    fix = f"Delete it and rerun: toolkit export --exp {arts.name} --force"
    doc = records.load(path, what=WHAT, reader_version=SCHEMA_VERSION, fix=fix)
    record = records.Entry(doc, path=path, what=WHAT, fix=fix)
    return ExportsRecord(
        spec=record.opt("spec", str, arts.name),
        source_model_sha256=record.opt("source_model_sha256", str),
        exports=[ExportEntry.from_dict(e, path=path) for e in record.req("exports", list)],
        updated_at=record.opt("updated_at", str),
    )


def write_exports(arts: SpecArtifacts, record: ExportsRecord) -> None:
    """exports.json, atomically, entries in the registry's order."""
    from toolkit.export.registry import FORMATS

    order = {k: i for i, k in enumerate(FORMATS)}
    listed = sorted(record.exports, key=lambda e: order.get(e.key, len(order)))
    artifacts.write_json(arts.exports_json, {
        records.VERSION_KEY: SCHEMA_VERSION,
        "spec": record.spec,
        "source_model_sha256": record.source_model_sha256,
        "updated_at": now(),
        "exports": [e.to_dict() for e in listed],
    })


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

