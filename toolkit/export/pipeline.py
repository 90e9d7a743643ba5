"""Export one trained spec to the chosen formats and record every file in exports.json.

Each export is independent: a converter that raises is recorded as failed (with its one-line
error) and the others still run. An export whose source model.keras, settings and file are
unchanged is skipped unless `force`. exports.json is rewritten (atomically) after every export,
so an interrupted run leaves an accurate list behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from toolkit import artifacts
from toolkit.artifacts import SpecArtifacts
from toolkit.export._common import (
    DEFAULT_CALIBRATION_SEED,
    DEFAULT_CALIBRATION_SIZE,
    base_metadata,
    calibration_sample,
    quiet,
)
from toolkit.export.registry import ExportFormat, export_path, read_exports_doc

Hook = Callable[[str, str], None]  # (event: "start" | "done", key)


@dataclass
class ExportOutcome:
    key: str
    status: str  # "exported" | "skipped" | "failed"
    entry: dict[str, Any]
    error: str | None = None


@dataclass
class SpecExport:
    spec: str
    source_sha256: str
    outcomes: list[ExportOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[ExportOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _settings(fmt: ExportFormat, opset: int | None, cal_size: int, cal_seed: int) -> dict[str, Any]:
    """What, besides the source model, determines the exported file."""
    from toolkit.export.onnx import DEFAULT_OPSET

    settings: dict[str, Any] = {}
    if fmt.format == "onnx":
        settings["opset"] = DEFAULT_OPSET if opset is None else opset
    if fmt.precision == "int8":
        settings["calibration"] = {"size": cal_size, "seed": cal_seed, "source": "training images"}
    return settings


def _unchanged(arts: SpecArtifacts, entry: dict[str, Any] | None, source_sha: str,
               settings: dict[str, Any]) -> bool:
    if not entry or entry.get("status") != "exported" or entry.get("source_model_sha256") != source_sha:
        return False
    if entry.get("settings") != settings:
        return False
    path = arts.dir / entry["path"]
    return path.is_file() and artifacts.sha256_file(path) == entry.get("sha256")


def export_lock(arts: SpecArtifacts):
    """Held while exports.json is read and rewritten (export and parity), so two commands on the
    same spec cannot interleave; the second one is told it is busy."""
    return artifacts.exclusive_lock(arts.dir / ".export.lock", what=f"exports of {arts.name}")


def save_entries(arts: SpecArtifacts, entries: dict[str, dict[str, Any]], source_sha: str) -> None:
    from toolkit.export.registry import FORMATS

    order = {k: i for i, k in enumerate(FORMATS)}
    listed = sorted(entries.values(), key=lambda e: order.get(e.get("key"), len(order)))
    artifacts.write_json(arts.exports_json, {
        "spec": arts.name,
        "source_model_sha256": source_sha,
        "updated_at": now(),
        "exports": listed,
    })


def export_spec(
    name: str,
    formats: Sequence[ExportFormat],
    *,
    root=None,
    opset: int | None = None,
    force: bool = False,
    dataset=None,
    data_dir=None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    calibration_seed: int = DEFAULT_CALIBRATION_SEED,
    hook: Hook | None = None,
) -> SpecExport:
    """Export spec `name`'s current model.keras to each format; never raises for one converter."""
    arts = artifacts.spec_artifacts(name, root)
    arts.require_trained()
    if any(f.format == "onnx" for f in formats):
        from toolkit.export.onnx import check_opset

        check_opset(opset)  # a bad --opset is a usage error, before any work
    with export_lock(arts):
        source_sha = artifacts.sha256_file(arts.model)
        doc = read_exports_doc(arts)
        entries: dict[str, dict[str, Any]] = {e["key"]: e for e in doc["exports"] if "key" in e}
        result = SpecExport(name, source_sha)
        model = None
        calibration: np.ndarray | None = None
        for fmt in formats:
            settings = _settings(fmt, opset, calibration_size, calibration_seed)
            target = export_path(arts, fmt)
            if not force and _unchanged(arts, entries.get(fmt.key), source_sha, settings):
                result.outcomes.append(ExportOutcome(fmt.key, "skipped", entries[fmt.key]))
                continue
            if hook:
                hook("start", fmt.key)
            entry: dict[str, Any] = {
                "key": fmt.key, "format": fmt.format, "precision": fmt.precision,
                "path": str(target.relative_to(arts.dir)), "runtimes": list(fmt.runtimes),
                "devices": list(fmt.devices), "source_model_sha256": source_sha, "settings": settings,
                "calibration": settings.get("calibration"), "exported_at": now(),
            }
            started = time.perf_counter()
            try:
                if model is None:
                    from toolkit.models import load_model

                    model = load_model(arts.model)
                if fmt.precision == "int8" and calibration is None:
                    if dataset is None:
                        from toolkit import data

                        dataset = data.load(data_dir)
                    calibration, _ = calibration_sample(dataset.x_train, size=calibration_size,
                                                        seed=calibration_seed)
                with quiet():
                    facts = fmt.exporter_fn()(
                        model, target, precision=fmt.precision,
                        calibration=calibration if fmt.precision == "int8" else None,
                        opset=opset, metadata=base_metadata(name, source_sha),
                    )
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one broken converter must not stop the others
                from toolkit.errors import ArtifactError

                if isinstance(exc, ArtifactError) and model is None:
                    raise  # model.keras itself is unreadable: nothing can be exported
                entry.update(status="failed", error=one_line(exc), size_bytes=None, sha256=None,
                             parity={"status": "not run", "passed": None})
                outcome = ExportOutcome(fmt.key, "failed", entry, entry["error"])
            else:
                entry.update(status="exported", error=None, size_bytes=target.stat().st_size,
                             sha256=artifacts.sha256_file(target),
                             export_seconds=round(time.perf_counter() - started, 2),
                             parity={"status": "not run", "passed": None}, **facts)
                outcome = ExportOutcome(fmt.key, "exported", entry)
            entries[fmt.key] = entry
            save_entries(arts, entries, source_sha)
            result.outcomes.append(outcome)
            if hook:
                hook("done", fmt.key)
        return result
