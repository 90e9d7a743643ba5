"""What the server loads: the chosen export of a spec, and the recommender (embedding ONNX +
catalog). Imports no TensorFlow; this is the serving code's one door to the export records.

The export is the report's pick for the spec, read from the pick record `toolkit report` writes
(toolkit.core.pick_record: the fastest servable export tied with the spec's most accurate row,
with the runtime it was measured on), narrowed by --format/--precision/--runtime when given;
without a record, the first of FALLBACK_ORDER that passed parity, on its format's default
runtime (or --runtime). Parity is the runtime's own row (OpenVINO's bf16 row is not the file's
ONNX Runtime row). A missing export refuses with exit 4, an export whose parity failed or never
ran on that runtime with exit 5, each naming the command that fixes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import CLASS_NAMES
from toolkit.core import artifacts
from toolkit.core.errors import ArtifactError, ParityError, UsageError
from toolkit.core.pick_record import FILE, SERVING_RUNTIMES
from toolkit.recommend.index import ExactIndex

# When no report has picked: the smallest, fastest CPU variants first.
FALLBACK_ORDER = (
    "onnx-int8",
    "openvino-int8",
    "tflite-int8",
    "onnx-dynamic",
    "tflite-dynamic",
    "onnx-fp32",
    "tflite-fp32",
    "tflite-fp16",
    "onnx-fp16",
)


@dataclass(frozen=True)
class ExportChoice:
    key: str
    format: str
    precision: str
    path: Path
    sha256: str
    parity: dict[str, Any]
    chosen_by: str
    runtime: str = ""  # the runtime it is served on (SERVING_RUNTIMES); "": the format's default


@dataclass
class Classifier:
    spec: str
    choice: ExportChoice
    model: Any  # toolkit.runtimes.LoadedModel
    identity: dict[str, Any] = field(default_factory=dict)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N,28,28] -> probabilities float32 [N,10]."""
        from toolkit.core.data import to_model_input

        return self.model.run(to_model_input(pixels))


@dataclass
class Recommender:
    spec: str
    embedder: Any  # toolkit.recommend.OnnxEmbedder
    index: Any  # toolkit.serve.index.ExactIndex over the L2-normalised catalog
    labels: np.ndarray
    images: np.ndarray  # uint8 [M,28,28]: the catalog items, for thumbnails
    info: dict[str, Any]

    def search(self, pixels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 [N,28,28] -> (catalog indices, cosine similarities) [N,k], best first, and the
        candidates the exact search rescored for each query [N]."""
        from toolkit.core.data import to_model_input

        return self.index.search(self.embedder.embed(to_model_input(pixels)), k)


def _exports(arts: artifacts.SpecArtifacts) -> list[Any]:
    from toolkit.export.record import read_exports

    return read_exports(arts).exports


def _parity_of(arts: artifacts.SpecArtifacts, entry: Any, runtime: str) -> dict[str, Any]:
    """The parity summary of the entry's row on `runtime`, its status for the file there now:
    pass, fail, not run, or stale (parity checked another file than the one there now)."""
    path = arts.dir / entry.path
    row = entry.runtime_row(runtime)
    state = entry.runtime_state(runtime, artifacts.sha256_file(path) if path.is_file() else None)
    summary = entry.parity if row == entry.key else entry.rows.get(row) if row else None
    return {**(summary.to_dict() if summary is not None else {}), "status": state, "row": row,
            "runtime": runtime}


def _serving_runtime(fmt: str, runtime: str | None) -> str:
    return runtime or SERVING_RUNTIMES[fmt][0]


def _recorded_pick(spec: str, root: Path, entries: dict[str, Any], runtime: str | None) -> tuple[Any, str]:
    """The report's pick for `spec` among `entries` (key -> export entry) on `runtime` (None:
    any), from the pick record toolkit.core.pick_record, or (None, why not); a candidate must have
    passed parity on its own runtime. A candidate whose file changed since the report is refused:
    a stale record must not choose a model."""
    from toolkit.core.pick_record import read_picks

    record = read_picks(root)
    entry = record.specs.get(spec) if record is not None else None
    if entry is None:
        return None, f"no pick record for {spec} under {root} (`toolkit report` writes {FILE})"
    arts = artifacts.spec_artifacts(spec, root)
    for candidate in entry.candidates:
        if (candidate.key in entries and candidate.servable and runtime in (None, candidate.runtime)
                and _parity_of(arts, entries[candidate.key], candidate.runtime)["status"] == "pass"):
            path = artifacts.spec_artifacts(spec, root).dir / candidate.path
            sha = artifacts.sha256_file(path) if path.is_file() else None
            if sha != candidate.sha256:
                raise ArtifactError(
                    f"{root / FILE}: the report picked {spec} {candidate.key} with sha256 "
                    f"{candidate.sha256[:12]}, but {path} is "
                    f"{'missing' if sha is None else 'another file now'}; the pick is stale. Rerun: toolkit "
                    f"bench --exp {spec} --artifacts {root} && toolkit report --artifacts {root}")
            return candidate, entry.reason
    return None, f"{entry.reason}; none of them is among the exports asked for"


def _check_options(format: str | None, precision: str | None, runtime: str | None) -> None:  # noqa: A002
    from toolkit.core.contract import PRECISIONS

    if format is not None and format not in SERVING_RUNTIMES:
        raise UsageError(f"--format {format!r} cannot be served; valid: {', '.join(SERVING_RUNTIMES)}")
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    servers = dict.fromkeys(r for runtimes in SERVING_RUNTIMES.values() for r in runtimes)
    if runtime is not None and runtime not in servers:
        raise UsageError(f"--runtime {runtime!r} cannot serve (it needs TensorFlow, a GPU, or is host-only); "
                         f"valid: {', '.join(servers)}")
    if runtime is not None and format is not None and runtime not in SERVING_RUNTIMES[format]:
        raise UsageError(f"--runtime {runtime} does not run {format} files; for {format}: "
                         f"{', '.join(SERVING_RUNTIMES[format])}")


def choose_export(
    spec: str,
    root: Path | None = None,
    *,
    format: str | None = None,  # noqa: A002
    precision: str | None = None,
    runtime: str | None = None,
) -> ExportChoice:
    """The export to serve, and its runtime (see the module's docstring for the rule and the exit
    codes)."""
    _check_options(format, precision, runtime)
    arts = artifacts.spec_artifacts(spec, root)
    fix_export = (
        f"toolkit export --exp {spec} --format {format or 'all'} --precision {precision or 'all'}"
        f" --artifacts {arts.root}"
    )
    entries = [
        e
        for e in _exports(arts)
        if e.exported
        and (format is None or e.format == format)
        and (precision is None or e.precision == precision)
        and e.format in SERVING_RUNTIMES
        and (runtime is None or runtime in SERVING_RUNTIMES[e.format])
        and (arts.dir / e.path).is_file()
    ]
    wanted = " ".join(x for x in (format, precision) if x) or "any"
    on = f" on {runtime}" if runtime else ""
    if not entries:
        raise ArtifactError(
            f"{spec}: no {wanted} export{on} under {arts.dir} to serve. Export it first: {fix_export}"
        )
    by_key = {e.key: e for e in entries}
    picked, why = _recorded_pick(spec, arts.root, by_key, runtime)
    if picked is not None:
        key, served_on = picked.key, picked.runtime
        figures = f"accuracy {picked.accuracy:.4f}, " if picked.accuracy is not None else ""
        figures += f"p50 {picked.p50_ms:.3f} ms at batch 1" if picked.p50_ms is not None else ""
        computes = f", computing {picked.computes}" if picked.computes != picked.precision else ""
        chosen_by = f"the report's pick for {spec}: {key} on {served_on}{computes} ({figures}; {why})"
        return _verified(arts, by_key[key], _parity_of(arts, by_key[key], served_on), chosen_by, served_on)
    parity = {e.key: _parity_of(arts, e, _serving_runtime(e.format, runtime)) for e in entries}
    passed = {e.key: e for e in entries if parity[e.key]["status"] == "pass"}
    if not passed:
        states = ", ".join(f"{parity[e.key]['row'] or e.key} {parity[e.key]['status']}" for e in entries)
        # A failed check is a parity failure (exit 5); a file replaced since parity checked it, or
        # never checked, is a stale or incomplete record (exit 4, as the README says).
        error = ParityError if any(parity[e.key]["status"] == "fail" for e in entries) else ArtifactError
        raise error(
            f"{spec}: no {wanted} export has passed parity{on} ({states}); a server must not "
            f"answer with an unproven model. Fix: toolkit parity --exp {spec} --artifacts "
            f"{arts.root} (or re-export: {fix_export} --force)"
        )
    key = next(k for k in (*FALLBACK_ORDER, *passed) if k in passed)
    chosen_by = (
        f"the first of {', '.join(FALLBACK_ORDER)} with parity passed{on}, because the report "
        f"has no pick ({why.rstrip('.')}); run `toolkit bench --exp {spec}` and `toolkit report` to "
        "pick by speed"
    )
    return _verified(arts, passed[key], parity[key], chosen_by, parity[key]["runtime"])


def _verified(arts: artifacts.SpecArtifacts, entry: Any, parity: dict[str, Any],
              chosen_by: str, runtime: str) -> ExportChoice:
    path = arts.dir / entry.path
    fix = (
        f"toolkit export --exp {arts.name} --format {entry.format} --precision {entry.precision} "
        f"--force --artifacts {arts.root}"
    )
    sha = artifacts.sha256_file(path)
    if entry.sha256 is None:
        raise ArtifactError(f"{arts.exports_json}: the entry of {entry.key} records no sha256 (an edited or "
                            f"damaged record), so {path.name} cannot be verified. Re-export it: {fix}")
    if sha != entry.sha256:
        raise ArtifactError(
            f"{path}: its SHA-256 differs from the one exports.json recorded (the file "
            f"changed after export and parity). Re-export it: {fix}"
        )
    if arts.model.is_file() and entry.source_model_sha256 != artifacts.sha256_file(arts.model):
        raise ArtifactError(f"{path} was exported from an older model.keras; re-export it: {fix}")
    return ExportChoice(entry.key, entry.format, entry.precision, path, sha, parity, chosen_by, runtime)


def load_classifier(
    spec: str,
    root: Path | None = None,
    *,
    format: str | None = None,  # noqa: A002
    precision: str | None = None,
    threads: int | None = 1,
    runtime: str | None = None,
) -> Classifier:
    from toolkit import runtimes

    choice = choose_export(spec, root, format=format, precision=precision, runtime=runtime)
    model = runtimes.load(choice.path, choice.runtime, threads=threads)
    probe = model.run(np.zeros((2, 28, 28, 1), np.float32))
    if probe.shape != (2, len(CLASS_NAMES)):
        raise ArtifactError(
            f"{choice.path}: outputs shape {list(probe.shape)} for 2 images, expected "
            f"[2, {len(CLASS_NAMES)}]. Re-export it"
        )
    parity = {
        k: choice.parity.get(k)
        for k in ("status", "row", "agreement", "test_accuracy", "keras_accuracy", "max_abs_diff")
        if k in choice.parity
    }
    identity = {
        "spec": spec,
        "key": choice.key,
        "format": choice.format,
        "precision": choice.precision,
        "sha256": choice.sha256,
        "file": choice.path.name,
        "parity": parity,
        **model.describe(),
        "chosen_by": choice.chosen_by,
    }
    return Classifier(spec, choice, model, identity)


def open_embedder(spec: str, root: Path | None = None, *, threads: int | None = 1) -> Any:
    """recommend/embedding.onnx on ONNX Runtime; ArtifactError, naming the command that builds it,
    when it is missing, unreadable or exported from an older model.keras. `toolkit run` does not
    build it, so `toolkit serve` after the pipeline serves classification without it."""
    from toolkit.recommend.embedding import EMBEDDING_ONNX, OnnxEmbedder

    arts = artifacts.spec_artifacts(spec, root)
    path = arts.recommend_dir / EMBEDDING_ONNX
    fix = (
        f"Build it where TensorFlow is installed: toolkit recommend --exp {spec} --onnx --index 0 "
        f"--artifacts {arts.root}"
    )
    if not path.is_file():
        raise ArtifactError(f"{path}: the recommender's embedding model is missing. {fix}")
    embedder = OnnxEmbedder(path, threads)
    if arts.model.is_file() and embedder.source_sha256 != artifacts.sha256_file(arts.model):
        raise ArtifactError(f"{path} was exported from an older model.keras. {fix}")
    return embedder


def load_recommender(
    spec: str,
    root: Path | None = None,
    *,
    data_dir: Path | None = None,
    threads: int | None = 1,
    catalog_limit: int | None = None,
    progress=None,
    embedder: Any = None,
) -> Recommender:
    """recommend/embedding.onnx and its catalog (built with ONNX Runtime when the cache is missing
    or stale; never re-exported here, which would need TensorFlow)."""
    from toolkit.core import data
    from toolkit.recommend.catalog import load_catalog
    from toolkit.recommend.embedding import EMBEDDING_ONNX

    arts = artifacts.spec_artifacts(spec, root)
    path = arts.recommend_dir / EMBEDDING_ONNX
    embedder = embedder or open_embedder(spec, root, threads=threads)
    dataset = data.load(data_dir)
    catalog = load_catalog(spec, embedder, dataset, root=root, limit=catalog_limit, progress=progress)
    started = time.perf_counter()
    index = ExactIndex.build(catalog.vectors, threads=threads)
    info = {
        "items": int(len(catalog.labels)),
        "dim": int(catalog.vectors.shape[1]),
        "embedding_file": str(path.relative_to(arts.dir)),
        "embedding_sha256": artifacts.sha256_file(path),
        "source_model_sha256": embedder.source_sha256,
        "cache_dtype": catalog.info.get("dtype"),
        "built_now": catalog.built,
        "catalog_seconds": round(catalog.seconds, 2),
        "index_seconds": round(time.perf_counter() - started, 2),
        "search": (
            f"exact cosine top-k: an int8 scan of {index.head.shape[1]} rotated dims (holding "
            f"{index.head_energy:.1%} of the energy) bounds every item's score; the candidates "
            "are narrowed on those dims in float32, then rescored on the full float32 vectors"
        ),
    }
    return Recommender(spec, embedder, index, catalog.labels, dataset.x_train[: len(catalog.labels)], info)
