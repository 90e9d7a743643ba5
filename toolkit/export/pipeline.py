"""Export one trained spec to the chosen formats and record every file in exports.json.

Each export is independent: a converter that raises is recorded as failed (with its one-line
error) and the others still run. An export whose source model.keras, settings and file are
unchanged is skipped unless `force`. exports.json is rewritten (atomically) after every export,
so an interrupted run leaves an accurate list behind; a file replaced by an export that was then
killed before exports.json was rewritten no longer matches its entry's sha256, so its old parity
result is not believed (ExportEntry.parity_state) and the next export redoes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.core import artifacts
from toolkit.core.artifacts import SpecArtifacts
from toolkit.core.errors import ArtifactError
from toolkit.export._common import (
    DEFAULT_CALIBRATION_SEED,
    DEFAULT_CALIBRATION_SIZE,
    base_metadata,
    calibration_sample,
    quiet,
)
from toolkit.export.record import (
    EXPORTED,
    FAILED,
    ExportEntry,
    ExportsRecord,
    now,
    read_exports,
    write_exports,
)
from toolkit.export.registry import ExportFormat, export_path

Hook = Callable[[str, str], None]  # (event: "start" | "done", key)
SKIPPED = "skipped"
ONNX_BASED = ("onnx", "openvino")  # formats converted through the ONNX graph (--opset applies)


@dataclass
class ExportOutcome:
    key: str
    status: str  # "exported" | "skipped" | "failed"
    entry: ExportEntry
    error: str | None = None
    kept_previous: bool = False  # failed, and the previous valid file and record were kept


@dataclass
class SpecExport:
    spec: str
    source_sha256: str
    outcomes: list[ExportOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[ExportOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _settings(fmt: ExportFormat, *, opset: int | None, cal_size: int, cal_seed: int,
              source: ExportEntry | None = None) -> dict[str, Any]:
    """What, besides the source model, determines the exported file."""
    from toolkit.export.onnx import DEFAULT_OPSET

    settings: dict[str, Any] = {}
    if fmt.format in ONNX_BASED:
        settings["opset"] = DEFAULT_OPSET if opset is None else opset
    if fmt.format == "openvino":
        from toolkit.export._common import version_of

        # Another quantizer or plugin version may quantize differently: the file is redone.
        settings["tools"] = {name: version_of(name) for name in ("openvino", "nncf")}
    if fmt.calibrated:
        settings["calibration"] = {"size": cal_size, "seed": cal_seed, "source": "training images"}
    if fmt.source:
        from toolkit.runtimes import tflm

        # Made from another export's file: redone when that file changes, or when TFLM arrives
        # (or changes) to measure the arena the estimate stood in for.
        settings["source"] = {"key": fmt.source, "sha256": source.sha256 if source else None}
        settings["arena"] = f"{tflm.DISTRIBUTION} {tflm.version()}" if tflm.available() else "estimate"
    return settings


def with_sources(formats: Sequence[ExportFormat]) -> list[ExportFormat]:
    """The formats with each derived format's source before it (the C source needs the
    tflite-int8io file): exporting `--format c` alone brings its .tflite file up to date first."""
    from toolkit.export.registry import FORMATS

    ordered: list[ExportFormat] = []
    for fmt in formats:
        if fmt.source and FORMATS[fmt.source] not in ordered:
            ordered.append(FORMATS[fmt.source])
        if fmt not in ordered:
            ordered.append(fmt)
    return ordered


def _unchanged(arts: SpecArtifacts, entry: ExportEntry | None, *, source_sha: str,
               settings: dict[str, Any]) -> bool:
    if entry is None or not entry.exported or entry.source_model_sha256 != source_sha:
        return False
    if entry.settings != settings:
        return False
    files = [(entry.path, entry.sha256)] + [(f["path"], f.get("sha256")) for f in entry.files]
    return all((arts.dir / path).is_file() and artifacts.sha256_file(arts.dir / path) == sha
               for path, sha in files)


def export_lock(arts: SpecArtifacts):
    """Held while exports.json is read and rewritten (export and parity), so two commands on the
    same spec cannot interleave; the second one is told it is busy."""
    return artifacts.exclusive_lock(arts.dir / ".export.lock", what=f"exports of {arts.name}")


@dataclass
class _Inputs:
    """What the exporters share, loaded once and only when first needed."""

    arts: SpecArtifacts
    dataset: Any
    data_dir: Any
    calibration_size: int
    calibration_seed: int
    model: Any = None
    calibration: np.ndarray | None = None

    def keras_model(self):
        if self.model is None:
            from toolkit.specs.models import load_model

            self.model = load_model(self.arts.model)
        return self.model

    def calibration_images(self) -> np.ndarray:
        if self.calibration is None:
            if self.dataset is None:
                from toolkit.core import data

                self.dataset = data.load(self.data_dir)
            self.calibration, _ = calibration_sample(self.dataset.x_train, size=self.calibration_size,
                                                     seed=self.calibration_seed)
        return self.calibration


@dataclass(frozen=True)
class ExportSettings:
    """What, besides the source model.keras, shapes the exported files."""

    opset: int | None = None  # ONNX only; None: DEFAULT_OPSET
    force: bool = False  # redo unchanged exports too
    calibration_size: int = DEFAULT_CALIBRATION_SIZE  # int8 variants: seeded sample of training images
    calibration_seed: int = DEFAULT_CALIBRATION_SEED


def export_spec(name: str, formats: Sequence[ExportFormat], *, root=None,
                settings: ExportSettings = ExportSettings(), dataset=None, data_dir=None,
                hook: Hook | None = None) -> SpecExport:
    """Export spec `name`'s current model.keras to each format; never raises for one converter."""
    arts = artifacts.spec_artifacts(name, root)
    arts.require_trained()
    if any(f.format in ONNX_BASED for f in formats):
        from toolkit.export.onnx import check_opset

        check_opset(settings.opset)  # a bad --opset is a usage error, before any work
    with export_lock(arts):
        _clean_staging(arts)
        source_sha = artifacts.sha256_file(arts.model)
        record = read_exports(arts)
        entries = record.by_key()
        result = SpecExport(name, source_sha)
        inputs = _Inputs(arts, dataset, data_dir, settings.calibration_size, settings.calibration_seed)
        for fmt in with_sources(formats):
            source = entries.get(fmt.source) if fmt.source else None
            fmt_settings = _settings(fmt, opset=settings.opset, cal_size=settings.calibration_size,
                                     cal_seed=settings.calibration_seed, source=source)
            if not settings.force and _unchanged(arts, entries.get(fmt.key), source_sha=source_sha,
                                                 settings=fmt_settings):
                result.outcomes.append(ExportOutcome(fmt.key, SKIPPED, entries[fmt.key]))
                continue
            if hook:
                hook("start", fmt.key)
            outcome = _export_one(fmt, inputs, settings=fmt_settings, source_sha=source_sha,
                                  opset=settings.opset, source=source)
            if outcome.status == EXPORTED or not _still_valid(arts, entries.get(fmt.key)):
                entries[fmt.key] = outcome.entry
                write_exports(arts, ExportsRecord(name, source_sha, list(entries.values())))
            else:  # a failed re-export leaves the previous file and its record as they were
                outcome.kept_previous = True
            result.outcomes.append(outcome)
            if hook:
                hook("done", fmt.key)
        return result


def _clean_staging(arts: SpecArtifacts) -> None:
    """Staging folders of an export killed mid-way (we hold the export lock: no live one is ours)."""
    import shutil

    for stale in arts.export_dir.glob(".staging-*") if arts.export_dir.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)


def _still_valid(arts: SpecArtifacts, entry: ExportEntry | None) -> bool:
    """An exported entry whose files are still the ones it names (sha256)."""
    if entry is None or not entry.exported:
        return False
    files = [(entry.path, entry.sha256)] + [(f["path"], f.get("sha256")) for f in entry.files]
    return all((arts.dir / path).is_file() and artifacts.sha256_file(arts.dir / path) == sha
               for path, sha in files)


def _failure(exc: BaseException) -> str:
    """The one line a failed export records: the disk's fault named as such (a read-only folder,
    a full disk), else the converter's own error."""
    storage = artifacts.storage_error(exc)
    return storage.message if storage is not None else one_line(exc)


def _publish(staging, export_dir) -> None:
    """Move every file an exporter wrote under `staging` to the same place under export/ (each one
    replaces the old file in one rename)."""
    import os

    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        final = export_dir / path.relative_to(staging)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)


def _export_one(fmt: ExportFormat, inputs: _Inputs, *, settings: dict[str, Any], source_sha: str,
                opset: int | None, source: ExportEntry | None = None) -> ExportOutcome:
    """Export one format into a staging folder beside export/, and move its files into place only
    when the exporter succeeded: a failure (a converter error, a read-only folder, a full disk)
    leaves the previous files untouched."""
    import shutil

    arts = inputs.arts
    target = export_path(arts, fmt)
    entry = ExportEntry(
        key=fmt.key, format=fmt.format, precision=fmt.precision, path=str(target.relative_to(arts.dir)),
        status=FAILED, runtimes=list(fmt.runtimes), devices=list(fmt.devices),
        source_model_sha256=source_sha, settings=settings, calibration=settings.get("calibration"),
        exported_at=now(),
    )
    if fmt.source and (source is None or not source.exported):
        entry.error = f"its source export {fmt.source} failed; fix that one first"
        return ExportOutcome(fmt.key, FAILED, entry, entry.error)
    started = time.perf_counter()
    staging = None
    try:
        # A derived format reads its source's file, not model.keras.
        model = None if fmt.source else inputs.keras_model()
        calibration = inputs.calibration_images() if fmt.calibrated else None
        extra = {"source": arts.dir / source.path} if source is not None else {}
        staging = artifacts.make_private_dir(arts.export_dir, ".staging-")
        staged = staging / target.relative_to(arts.export_dir)
        staged.parent.mkdir(parents=True, exist_ok=True)
        with quiet():
            facts = fmt.exporter_fn()(
                model, staged, precision=fmt.precision, calibration=calibration, opset=opset,
                metadata=base_metadata(arts.name, source_sha, preprocessing=fmt.io.preprocessing), **extra,
            )
        _publish(staging, arts.export_dir)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one broken converter must not stop the others
        if isinstance(exc, ArtifactError) and inputs.model is None and not fmt.source:
            raise  # model.keras itself is unreadable: nothing can be exported
        entry.error = _failure(exc)
        return ExportOutcome(fmt.key, FAILED, entry, entry.error)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    entry.status = EXPORTED
    entry.size_bytes = artifacts.model_bytes(target)
    entry.sha256 = artifacts.sha256_file(target)
    entry.export_seconds = round(time.perf_counter() - started, 2)
    facts = dict(facts)
    entry.arena_bytes = facts.pop("arena_bytes", None)
    entry.files = [{**f, "path": str((target.parent / f["path"]).relative_to(arts.dir))}
                   for f in facts.pop("files", [])]
    entry.facts = facts
    return ExportOutcome(fmt.key, EXPORTED, entry)
