"""parity.json: every parity row of a spec's exports, one typed, versioned record with its one
reader (`read_parity`) and writer (`write_parity`).

Versions: 3 keys results by row (a file on a runtime at the precision it computes:
toolkit.export.registry.row_name), with `row`, `computes` and, for host-only runtimes, their time
and arena; 2 names in each result the sha256 of the file it checked; 1 has neither. A result
only counts for the file it checked: readers (and the merge of a partial recheck) ignore results
whose file has changed since. Results of versions 1 and 2 are their files' primary rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.core import artifacts, records
from toolkit.core.errors import ArtifactError, NewerRecordError
from toolkit.export.parity import TOLERANCES, WHAT, ParityResult
from toolkit.export.registry import FORMATS, export_path

SCHEMA_VERSION = 3


@dataclass
class SpecParity:
    """One check of a spec's exports: every row checked, and what could not be."""

    spec: str
    keras_accuracy: float
    results: list[ParityResult]
    images: int = 0
    not_checked: list[str] = field(default_factory=list)  # keys whose export failed or is missing
    skipped_rows: dict[str, str] = field(default_factory=dict)  # row -> why it did not run here
    keras_predictions: dict[str, Any] | None = None  # the Keras reference's top-1 file

    @property
    def failed(self) -> list[ParityResult]:
        return [r for r in self.results if not r.passed]


@dataclass
class ParityRecord:
    spec: str
    source_model_sha256: str | None
    results: list[ParityResult]
    test_images: int = 0
    keras_accuracy: float | None = None
    checked_at: str | None = None
    keras_predictions: dict[str, Any] | None = None  # absent in records older than per-image files

    def result(self, key: str) -> ParityResult | None:
        """The primary row of export `key`."""
        return self.row(key)

    def row(self, name: str) -> ParityResult | None:
        return next((r for r in self.results if r.name == name), None)


def read_parity(arts) -> ParityRecord | None:
    """The spec's parity.json, or None when there is none."""
    path = arts.parity_json
    if not path.is_file():
        return None
    fix = f"Delete it and rerun: toolkit parity --exp {arts.name}"
    doc = records.load(path, what=WHAT, reader_version=SCHEMA_VERSION, fix=fix)
    record = records.Entry(doc, path=path, what=WHAT, fix=fix)
    keras = record.opt("keras", dict, {})
    return ParityRecord(
        spec=record.opt("spec", str, arts.name),
        source_model_sha256=record.opt("source_model_sha256", str),
        results=[ParityResult.from_dict(r, path=path) for r in record.req("exports", list)],
        test_images=record.opt("test_images", int, 0),
        keras_accuracy=keras.get("test_accuracy"),
        checked_at=record.opt("checked_at", str),
        keras_predictions=_predictions(keras, path),
    )


def _predictions(keras: dict[str, Any], path) -> dict[str, Any] | None:
    ref = records.optional(keras, "predictions", dict, path=path, what=f"{WHAT} keras entry")
    if ref is not None:
        records.Entry(ref, path=path, what=f"{WHAT} keras predictions", fix="").relpath("file")
    return ref


def write_parity(arts, outcome: SpecParity, source_sha: str) -> None:
    """parity.json: this check's rows, plus earlier rows of other files or runtimes that still
    describe the files there now (same model.keras, same file sha256)."""
    kept: dict[str, ParityResult] = {}
    try:
        previous = read_parity(arts)
    except NewerRecordError:
        raise  # written by a newer toolkit: never overwritten by an older one
    except ArtifactError:
        previous = None  # a corrupt earlier record is replaced, not merged
    if previous is not None and previous.source_model_sha256 == source_sha:
        for r in previous.results:
            path = export_path(arts, FORMATS[r.key]) if r.key in FORMATS else None
            if r.sha256 and path is not None and path.is_file() and artifacts.sha256_file(path) == r.sha256:
                kept[r.name] = r
    kept.update({r.name: r for r in outcome.results})
    order = {k: i for i, k in enumerate(FORMATS)}
    artifacts.write_json(arts.parity_json, {
        records.VERSION_KEY: SCHEMA_VERSION,
        "spec": outcome.spec,
        "source_model_sha256": source_sha,
        "checked_at": records.now(),
        "test_images": outcome.images,
        "keras": {"runtime": "keras", "test_accuracy": outcome.keras_accuracy,
                  "predictions": outcome.keras_predictions},
        "tolerances": {k: {n: v for n, v in asdict(t).items() if v is not None}
                       for k, t in TOLERANCES.items()},
        "exports": [r.to_dict() for r in sorted(kept.values(),
                                                key=lambda r: (order.get(r.key, len(order)), r.name))],
    })
