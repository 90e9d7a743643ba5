"""The pick record, ARTIFACTS/pick.json: what `toolkit report` picked, written by the report and
read by `toolkit serve` (which then needs neither the report's code nor scipy to choose a model).

    {"schema_version": 2, "written_at": ..., "budget": {...}, "rule": "...", "pick_text": "...",
     "pick": PickedFile | null,                   # the report's own pick across its specs
     "specs": {NAME: {"budget", "rule", "reason", "written_at",
                      "candidates": [PickedFile, ...]}}}   # per spec, for serving

A spec's `candidates` are its servable rows (a file on one of its format's TensorFlow-free CPU
runtimes, SERVING_RUNTIMES) tied with that spec's most accurate usable row within the budget,
fastest first: the first one still exported and passing parity on its runtime is what `toolkit
serve` loads, on that runtime. Each candidate names its file's sha256: a file replaced since the
report is refused (exit 4), like a stale export. A report over some specs replaces their entries
and keeps the others'. One writer (`write_picks`) and one reader (`read_picks`).

Versions: 2 adds to each PickedFile the precision its runtime computes (`computes`: bf16 for a
float32 file on OpenVINO's default), its parity row (`row`) and the runtime's settings behind its
figures (`settings`, OpenVINO's); version-1 records read as computing the file's own precision on
the file's primary row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.core import artifacts, records
from toolkit.core.errors import ArtifactError, NewerRecordError

SCHEMA_VERSION = 2
FILE = "pick.json"
WHAT = "pick record"
FIX = "Delete it and rerun `toolkit report`"
# The runtimes a TensorFlow-free server may run each servable format on (CPU only), its default
# first (what `toolkit serve` uses when neither the pick nor --runtime names one).
SERVING_RUNTIMES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime", "openvino", "openvino-bf16"),
    "tflite": ("litert",),
    "openvino": ("openvino", "openvino-bf16"),
}


@dataclass(frozen=True)
class PickedFile:
    """One row of the report as a pick: which file, on which runtime, and its figures."""

    spec: str
    key: str  # the export key, e.g. "tflite-int8"
    format: str
    precision: str
    runtime: str
    device: str
    threads: int | None
    path: str  # relative to the spec's folder
    sha256: str
    accuracy: float | None = None
    p50_ms: float | None = None
    size_mb: float | None = None
    # Version 2 (a version-1 record: the file's own precision, its primary row, no settings):
    computes: str | None = None  # the precision the runtime computes
    row: str | None = None  # the parity row (toolkit.export.registry.row_name)
    settings: dict[str, Any] | None = None  # the runtime's settings behind the figures (OpenVINO's)

    @property
    def servable(self) -> bool:
        return self.device == "cpu" and self.runtime in SERVING_RUNTIMES.get(self.format, ())

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path) -> PickedFile:
        entry = records.Entry(doc, path=path, what=f"{WHAT} entry", fix=FIX)
        number = (int, float)
        precision, key = entry.req("precision", str), entry.key("key")
        return cls(spec=entry.key("spec"), key=key, format=entry.req("format", str),
                   precision=precision, runtime=entry.req("runtime", str),
                   device=entry.req("device", str), threads=entry.opt("threads", int),
                   path=entry.relpath("path"), sha256=entry.req("sha256", str),
                   accuracy=entry.opt("accuracy", number), p50_ms=entry.opt("p50_ms", number),
                   size_mb=entry.opt("size_mb", number), computes=entry.opt("computes", str, precision),
                   row=entry.opt("row", str, key), settings=entry.opt("settings", dict))


@dataclass
class SpecPick:
    """What a spec serves: its tied servable rows, fastest first, and why."""

    spec: str
    budget: dict[str, float | None]
    rule: str
    reason: str
    candidates: list[PickedFile] = field(default_factory=list)
    written_at: str | None = None

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path) -> SpecPick:
        entry = records.Entry(doc, path=path, what=f"{WHAT} spec entry", fix=FIX)
        return cls(spec=entry.req("spec", str), budget=entry.opt("budget", dict, {}),
                   rule=entry.opt("rule", str, ""), reason=entry.opt("reason", str, ""),
                   candidates=[PickedFile.from_dict(c, path=path) for c in entry.req("candidates", list)],
                   written_at=entry.opt("written_at", str))


@dataclass
class PickRecord:
    budget: dict[str, float | None]
    rule: str
    pick_text: str
    pick: PickedFile | None
    specs: dict[str, SpecPick]
    written_at: str | None = None


def pick_path(root: Path | None) -> Path:
    return artifacts.resolve_root(root) / FILE


def read_picks(root: Path | None) -> PickRecord | None:
    """The pick record under `root`, or None when no report has written one."""
    path = pick_path(root)
    if not path.is_file():
        return None
    doc = records.load(path, what=WHAT, reader_version=SCHEMA_VERSION, fix=FIX)
    entry = records.Entry(doc, path=path, what=WHAT, fix=FIX)
    pick = entry.opt("pick", dict)
    return PickRecord(
        budget=entry.opt("budget", dict, {}), rule=entry.opt("rule", str, ""),
        pick_text=entry.opt("pick_text", str, ""),
        pick=None if pick is None else PickedFile.from_dict(pick, path=path),
        specs={name: SpecPick.from_dict(s, path=path) for name, s in entry.req("specs", dict).items()},
        written_at=entry.opt("written_at", str))


def write_picks(root: Path | None, record: PickRecord, *, folder: Path | None = None) -> Path:
    """pick.json, atomically (into `folder` when given, e.g. a report's staging folder); entries of
    specs this report did not cover are kept from the root's last one."""
    path = pick_path(root) if folder is None else folder / pick_path(root).name
    specs = dict(record.specs)
    try:
        previous = read_picks(root)
    except NewerRecordError:
        raise  # written by a newer toolkit: never overwritten by an older one
    except ArtifactError:
        previous = None  # a damaged record is replaced, not merged
    if previous is not None:
        specs = {**previous.specs, **specs}
    written_at = records.now()
    artifacts.write_json(path, {
        records.VERSION_KEY: SCHEMA_VERSION, "written_at": written_at, "budget": record.budget,
        "rule": record.rule, "pick_text": record.pick_text,
        "pick": None if record.pick is None else asdict(record.pick),
        "specs": {name: {**asdict(s), "written_at": s.written_at or written_at}
                  for name, s in sorted(specs.items())},
    })
    return path
