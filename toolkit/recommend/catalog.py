"""The catalog (the training images' embeddings, cached as float16 .npy beside a json naming the
sha256 of the model.keras it came from: a changed model rebuilds it) and the exact brute-force
search over it (one matrix product per batch of queries, then argpartition)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import artifacts, data
from toolkit.core.errors import UsageError
from toolkit.recommend.embedding import Embedder, Progress
from toolkit.specs import get_spec

SEARCH_BATCH = 256
CATALOG_DTYPE = np.float16


@dataclass
class Catalog:
    vectors: np.ndarray  # float32 [M,D], L2-normalised
    labels: np.ndarray
    info: dict[str, Any]
    built: bool
    seconds: float


def _catalog_paths(arts: artifacts.SpecArtifacts, limit: int | None) -> tuple[Path, Path]:
    stem = "catalog" if limit is None else f"catalog-n{limit}"
    return arts.recommend_dir / f"{stem}.npy", arts.recommend_dir / f"{stem}.json"


def load_catalog(exp: str, embedder: Embedder, dataset: data.Dataset, *, root: Path | None = None,
                 limit: int | None = None, rebuild: bool = False,
                 progress: Progress | None = None) -> Catalog:
    """The training set's embeddings: from the cache when it matches the model, else built."""
    arts = artifacts.spec_artifacts(get_spec(exp).name, root)
    n = catalog_size(dataset, limit)
    npy, meta_path = _catalog_paths(arts, limit)
    expected = {"source_model_sha256": embedder.source_sha256, "images": n,
                "train_images_sha256": dataset.checksums.get("train-images-idx3-ubyte", "")}
    started = time.perf_counter()
    if not rebuild and npy.is_file() and meta_path.is_file():
        try:
            info = json.loads(meta_path.read_text())
            if {k: info.get(k) for k in expected} == expected:
                vectors = np.load(npy, allow_pickle=False)
                if vectors.shape == (n, info["dim"]):
                    return Catalog(vectors.astype(np.float32), dataset.y_train[:n], info, False,
                                   time.perf_counter() - started)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt, never trusted
    vectors = embedder.embed(data.to_model_input(dataset.x_train[:n]), progress, "indexing catalog")
    compact = vectors.astype(CATALOG_DTYPE)
    info = {**expected, "dim": int(vectors.shape[1]), "dtype": np.dtype(CATALOG_DTYPE).name,
            "built_with": embedder.backend, "spec": arts.name,
            "seconds": round(time.perf_counter() - started, 2),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with artifacts.atomic_path(npy) as tmp:
        np.save(tmp, compact, allow_pickle=False)
    artifacts.write_json(meta_path, info)  # written last: the pair counts only when it matches
    return Catalog(compact.astype(np.float32), dataset.y_train[:n], info, True,
                   time.perf_counter() - started)


def catalog_size(dataset: data.Dataset, catalog_limit: int | None) -> int:
    n = len(dataset.y_train) if catalog_limit is None else catalog_limit
    if not 1 <= n <= len(dataset.y_train):
        raise UsageError(f"--catalog-limit must be 1..{len(dataset.y_train)}, got {catalog_limit}")
    return n


def search(catalog: np.ndarray, queries: np.ndarray, k: int,
           batch: int = SEARCH_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine (dot product of normalised vectors): (indices, similarities) [Q,k],
    best first; equal similarities keep the lower catalog index first."""
    if not 1 <= k <= len(catalog):
        raise UsageError(f"-k must be 1..{len(catalog)} (the catalog size), got {k}")
    indices = np.empty((len(queries), k), dtype=np.int64)
    sims = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), batch):
        scores = queries[start:start + batch] @ catalog.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        indices[start:start + batch] = np.take_along_axis(part, order, axis=1)
        sims[start:start + batch] = np.take_along_axis(part_scores, order, axis=1)
    return indices, sims
