"""Similar-product recommender on the penultimate-layer embeddings of a trained spec.

    embedder = get_embedder("CNN_1L_Dropout_Exp6", backend="onnxruntime")
    catalog = load_catalog(embedder, dataset)          # built once, cached under recommend/
    result = recommend(exp, index=42, k=5)             # top-k with class and cosine similarity

Embeddings are L2-normalised activations of the layer named `embedding`, so cosine similarity
is a dot product. The catalog is the 60,000 training images, cached as float16 .npy (half the
bytes; similarities move by ~1e-3 at most) with a json naming the sha256 of the model.keras it
came from: a changed model rebuilds it. Search is exact and brute force: one matrix product per
batch of queries, then argpartition.

Two backends compute embeddings: "keras" (model.keras cut at `embedding`) and "onnxruntime"
(the embedding model exported to recommend/embedding.onnx by toolkit.export.onnx.keras_to_onnx). The
ONNX path imports neither TensorFlow nor Keras unless it has to (re)export the file, so it runs
on hosts that only have ONNX Runtime.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import CLASS_NAMES, artifacts, data
from toolkit.contract import embedding_contract
from toolkit.errors import ArtifactError, ContractError, UsageError
from toolkit.predict import load_image
from toolkit.specs import get_spec

BACKENDS = ("keras", "onnxruntime")
EMBEDDING_ONNX = "embedding.onnx"
EMBED_BATCH = 1000
SEARCH_BATCH = 256
EVAL_KS = (1, 5, 10)
CATALOG_DTYPE = np.float16
STRIP_MAX = 20  # neighbours drawn in the PNG strip; a larger k is listed in full, drawn in part

Progress = Callable[[str, int, int], None]  # (what, done, total)


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # An all-zero embedding (every ReLU off) stays zero rather than becoming NaN.
    return x / np.where(norms > 0, norms, 1.0)


# ---------------------------------------------------------------- embedders


class Embedder:
    """Images float32 [N,28,28,1] in [0,1] -> L2-normalised embeddings float32 [N,D]."""

    backend: str = ""
    source_sha256: str = ""  # sha256 of the model.keras the embeddings come from
    path: Path | None = None

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed(self, images: np.ndarray, progress: Progress | None = None,
              what: str = "embedding") -> np.ndarray:
        out = []
        for start in range(0, len(images), EMBED_BATCH):
            out.append(normalize(self._raw(np.ascontiguousarray(images[start:start + EMBED_BATCH]))))
            if progress:
                progress(what, min(start + EMBED_BATCH, len(images)), len(images))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class KerasEmbedder(Embedder):
    def __init__(self, model_path: Path, source_sha256: str) -> None:
        import warnings

        from toolkit._tf import tf
        from toolkit.models import embedding_model, load_model

        self.backend, self.path, self.source_sha256 = "keras", model_path, source_sha256
        self.model = embedding_model(load_model(model_path))
        self.dim = int(self.model.outputs[0].shape[-1])
        warnings.filterwarnings("ignore", message=r".*structure of `inputs`.*")
        self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        return self._call(batch).numpy()


class OnnxEmbedder(Embedder):
    """recommend/embedding.onnx on ONNX Runtime (CPU), through toolkit.runtimes."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from toolkit import runtimes

        self.backend, self.path = "onnxruntime", path
        try:
            self.loaded = runtimes.load(path, runtime="onnxruntime", threads=threads,
                                        contract=embedding_contract())
        except ContractError as exc:
            raise ContractError(f"{exc.message.rstrip('.')}; delete it, the next `toolkit recommend --onnx` "
                                "re-exports it") from None
        meta = self.loaded.session.get_modelmeta().custom_metadata_map
        self.source_sha256 = meta.get("source_model_sha256", "")
        self.dim = int(self.loaded.session.get_outputs()[0].shape[-1])

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        return self.loaded.run(batch)


def export_embedding_onnx(exp: str, root: str | Path | None = None) -> Path:
    """Export model.keras cut at `embedding` to recommend/embedding.onnx (needs TensorFlow)."""
    arts = artifacts.spec_artifacts(get_spec(exp).name, root)
    arts.require_trained()
    try:
        from toolkit.export.onnx import keras_to_onnx
        from toolkit.models import embedding_model, load_model
    except ImportError as exc:
        raise ArtifactError(
            f"{arts.recommend_dir / EMBEDDING_ONNX} is missing or stale and cannot be exported here "
            f"({exc}). Export it on a machine with TensorFlow: toolkit recommend --exp {arts.name} "
            "--onnx --evaluate (or any --onnx query)"
        ) from None
    target = arts.recommend_dir / EMBEDDING_ONNX
    sha = artifacts.sha256_file(arts.model)
    contract = embedding_contract()
    keras_to_onnx(embedding_model(load_model(arts.model)), target, input_name=contract.input.name,
                  output_name=contract.output.name,
                  metadata={"source_model_sha256": sha, "spec": arts.name,
                            "contract": "image float32 [N,28,28,1] in [0,1] -> embedding [N,D] "
                                        "(penultimate activations, not normalised)"})
    return target


def get_embedder(exp: str, *, backend: str = "keras", root: str | Path | None = None,
                 threads: int | None = None) -> Embedder:
    """An embedder for the spec's current run. The ONNX file is (re)exported only when it is
    missing or was exported from another model.keras."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    arts = artifacts.spec_artifacts(get_spec(exp).name, root)
    current = artifacts.sha256_file(arts.model) if arts.model.is_file() else None
    if backend == "keras":
        arts.require_trained()
        return KerasEmbedder(arts.model, current or "")
    path = arts.recommend_dir / EMBEDDING_ONNX
    if path.is_file():
        embedder = OnnxEmbedder(path, threads)
        # Without model.keras (an ONNX-only host) the file is taken as it is.
        if current is None or embedder.source_sha256 == current:
            return embedder
    elif current is None:
        arts.require_trained()
    export_embedding_onnx(arts.name, root)
    return OnnxEmbedder(path, threads)


# ---------------------------------------------------------------- catalog


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


def load_catalog(exp: str, embedder: Embedder, dataset: data.Dataset, *, root: str | Path | None = None,
                 limit: int | None = None, rebuild: bool = False,
                 progress: Progress | None = None) -> Catalog:
    """The training set's embeddings: from the cache when it matches the model, else built."""
    arts = artifacts.spec_artifacts(get_spec(exp).name, root)
    n = _catalog_size(dataset, limit)
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


# ---------------------------------------------------------------- search


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


# ---------------------------------------------------------------- recommend


@dataclass
class Recommendation:
    spec: str
    backend: str
    query: str
    query_label: int | None
    neighbours: list[dict[str, Any]]
    notes: list[str]
    strip: Path
    catalog: Catalog = field(repr=False)

    @property
    def strip_shows(self) -> int:
        """How many neighbours the strip draws (at most STRIP_MAX)."""
        return min(len(self.neighbours), STRIP_MAX)


def _catalog_size(dataset: data.Dataset, catalog_limit: int | None) -> int:
    n = len(dataset.y_train) if catalog_limit is None else catalog_limit
    if not 1 <= n <= len(dataset.y_train):
        raise UsageError(f"--catalog-limit must be 1..{len(dataset.y_train)}, got {catalog_limit}")
    return n


def _dataset_and_catalog(exp, *, backend, root, data_dir, catalog_limit, progress, rebuild=False):
    spec = get_spec(exp)
    dataset = data.load(data_dir)
    _catalog_size(dataset, catalog_limit)  # before any model loads or any image is embedded
    embedder = get_embedder(spec.name, backend=backend, root=root)
    catalog = load_catalog(spec.name, embedder, dataset, root=root, limit=catalog_limit,
                           rebuild=rebuild, progress=progress)
    return spec, dataset, embedder, catalog


def recommend(
    exp: str,
    *,
    index: int | None = None,
    image: str | Path | None = None,
    train_index: int | None = None,
    k: int = 5,
    backend: str = "keras",
    root: str | Path | None = None,
    data_dir: str | Path | None = None,
    catalog_limit: int | None = None,
    progress: Progress | None = None,
) -> Recommendation:
    """Top-k catalog items for one query: a test-set index, an image file, or (for checks) a
    training-set index, which is itself in the catalog."""
    given = [name for name, v in (("--index", index), ("--image", image), ("train_index", train_index))
             if v is not None]
    if len(given) != 1:
        raise UsageError("give exactly one query: --index I (a test image) or --image FILE"
                         + (f"; got {' and '.join(given)}" if given else ""))
    if k < 1:
        raise UsageError(f"-k must be at least 1, got {k}")
    notes: list[str] = []
    if image is not None:
        # The same conversion as `toolkit predict`; bad input fails before any model loads.
        pixels, notes = load_image(image)
    spec, dataset = get_spec(exp), data.load(data_dir)
    n_catalog = _catalog_size(dataset, catalog_limit)
    if k > n_catalog:  # checked before the catalog is built: that takes minutes on a CPU
        raise UsageError(f"-k {k} is more than the {n_catalog:,} catalog images; use 1..{n_catalog}")
    label: int | None
    if index is not None:
        if not 0 <= index < len(dataset.y_test):
            raise UsageError(f"--index {index} is outside the test set; use 0..{len(dataset.y_test) - 1}")
        pixels, label, query = dataset.x_test[index], int(dataset.y_test[index]), f"test image {index}"
        tag = f"test{index}"
    elif train_index is not None:
        if not 0 <= train_index < len(dataset.y_train):
            raise UsageError(f"train_index {train_index} is outside the training set")
        pixels, label = dataset.x_train[train_index], int(dataset.y_train[train_index])
        query, tag = f"training image {train_index}", f"train{train_index}"
    else:
        label, query = None, f"file {Path(image).name}"
        tag = "file-" + re.sub(r"[^A-Za-z0-9_.-]", "_", Path(image).stem)[:60]
    spec, dataset, embedder, catalog = _dataset_and_catalog(
        exp, backend=backend, root=root, data_dir=data_dir, catalog_limit=catalog_limit, progress=progress)
    vector = embedder.embed(data.to_model_input(pixels[None]))
    idx, sims = search(catalog.vectors, vector, k)
    neighbours = [{"rank": r + 1, "index": int(i), "label": int(catalog.labels[i]),
                   "class": CLASS_NAMES[int(catalog.labels[i])], "similarity": float(s)}
                  for r, (i, s) in enumerate(zip(idx[0], sims[0], strict=True))]
    arts = artifacts.spec_artifacts(spec.name, root)
    drawn = neighbours[:STRIP_MAX]
    shown = f"{k}" if k <= STRIP_MAX else f"the first {STRIP_MAX} of {k:,}"
    strip = plot_strip(
        query_pixels=pixels, query_title=query if label is None else f"{query}\n{CLASS_NAMES[label]}",
        query_label=label, images=[dataset.x_train[n["index"]] for n in drawn], neighbours=drawn,
        title=f"{spec.name}: {shown} most similar training-catalog items ({embedder.backend})",
        target=arts.recommend_dir / f"strip-{tag}.png")
    return Recommendation(spec.name, embedder.backend, query, label, neighbours, notes, strip, catalog)


def plot_strip(*, query_pixels: np.ndarray, query_title: str, query_label: int | None,
               images: list[np.ndarray], neighbours: list[dict[str, Any]], title: str,
               target: Path) -> Path:
    """The query beside its neighbours; callers draw at most STRIP_MAX (a wider figure only
    takes longer to render and is unreadable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images) + 1, figsize=(1.9 * (len(images) + 1), 2.9), squeeze=False)
    axes = axes[0]
    axes[0].imshow(query_pixels, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(f"QUERY\n{query_title}", fontsize=9, fontweight="bold")
    for side in axes[0].spines.values():
        side.set_edgecolor("tab:blue")
        side.set_linewidth(3)
    for ax, pic, n in zip(axes[1:], images, neighbours, strict=True):
        ax.imshow(pic, cmap="gray", vmin=0, vmax=255)
        match = query_label is None or n["label"] == query_label
        ax.set_title(f"#{n['rank']} {n['class']}\ncos {n['similarity']:.3f}\ntrain {n['index']}",
                     fontsize=8, color="black" if match else "tab:red")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    artifacts.write_bytes(target, buffer.getvalue())
    return target


# ---------------------------------------------------------------- evaluate


def retrieval_metrics(catalog: np.ndarray, catalog_labels: np.ndarray, queries: np.ndarray,
                      query_labels: np.ndarray, *, ks=EVAL_KS, batch: int = SEARCH_BATCH,
                      progress: Progress | None = None, what: str = "ranking") -> dict[str, Any]:
    """precision@k, mAP@10 and mAP over the full ranking of the catalog (a neighbour is relevant
    when its class matches the query's), plus the seconds spent in the top-k search alone."""
    kmax = max(ks)
    counts = np.bincount(catalog_labels, minlength=len(CLASS_NAMES))
    hits_at = {k: 0.0 for k in ks}
    ap_sum, ap10_sum, search_seconds = 0.0, 0.0, 0.0
    ranks = np.arange(1, len(catalog) + 1, dtype=np.float64)
    for start in range(0, len(queries), batch):
        q, ql = queries[start:start + batch], query_labels[start:start + batch]
        t0 = time.perf_counter()
        scores = q @ catalog.T
        part = np.argpartition(-scores, kmax - 1, axis=1)[:, :kmax]
        part_scores = np.take_along_axis(scores, part, axis=1)
        top = np.take_along_axis(part, np.lexsort((part, -part_scores), axis=1), axis=1)
        search_seconds += time.perf_counter() - t0
        rel_top = catalog_labels[top] == ql[:, None]
        for k in ks:
            hits_at[k] += rel_top[:, :k].mean(axis=1).sum()
        cum = np.cumsum(rel_top, axis=1)
        denom = np.minimum(kmax, counts[ql])
        ap10_sum += (((cum / ranks[:kmax]) * rel_top).sum(axis=1) / denom).sum()
        # Full ranking: AP = mean over all relevant items of the precision at their rank.
        order = np.argsort(-scores, axis=1, kind="stable")
        rel = catalog_labels[order] == ql[:, None]
        prec = np.cumsum(rel, axis=1) / ranks
        ap_sum += ((prec * rel).sum(axis=1) / counts[ql]).sum()
        if progress:
            progress(what, min(start + batch, len(queries)), len(queries))
    n = len(queries)
    return {f"precision@{k}": hits_at[k] / n for k in ks} | {
        "mAP@10": ap10_sum / n, "mAP": ap_sum / n, "search_seconds": search_seconds}


def evaluate(
    exp: str,
    *,
    backend: str = "keras",
    root: str | Path | None = None,
    data_dir: str | Path | None = None,
    catalog_limit: int | None = None,
    query_limit: int | None = None,
    single_queries: int = 200,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Retrieval quality with the test set as queries against the training catalog, beside raw
    pixels (L2-normalised 784-d vectors) as a baseline, and queries per second."""
    spec, dataset, embedder, catalog = _dataset_and_catalog(
        exp, backend=backend, root=root, data_dir=data_dir, catalog_limit=catalog_limit, progress=progress)
    nq = len(dataset.y_test) if query_limit is None else min(query_limit, len(dataset.y_test))
    x_q = data.to_model_input(dataset.x_test[:nq])
    y_q = dataset.y_test[:nq].astype(np.int64)
    n_cat = len(catalog.labels)

    t0 = time.perf_counter()
    q_emb = embedder.embed(x_q, progress, "embedding queries")
    embed_seconds = time.perf_counter() - t0
    model_scores = retrieval_metrics(catalog.vectors, catalog.labels, q_emb, y_q, progress=progress,
                                     what="ranking (embeddings)")

    raw_catalog = normalize(dataset.x_train[:n_cat])
    t0 = time.perf_counter()
    raw_q = normalize(dataset.x_test[:nq])
    raw_embed_seconds = time.perf_counter() - t0
    raw_scores = retrieval_metrics(raw_catalog, catalog.labels, raw_q, y_q, progress=progress,
                                   what="ranking (raw pixels)")

    # One query at a time, as an interactive user would send them: embed + exact top-5.
    singles = min(single_queries, nq)
    single_embed = single_search = 0.0
    for i in range(singles):
        t0 = time.perf_counter()
        vector = embedder.embed(x_q[i:i + 1])
        t1 = time.perf_counter()
        search(catalog.vectors, vector, 5)
        single_embed += t1 - t0
        single_search += time.perf_counter() - t1
    single_seconds = single_embed + single_search

    def row(name, scores, embed_s, dim):
        total = embed_s + scores["search_seconds"]
        return {"embedding": name, "dim": dim, **{k: v for k, v in scores.items() if k != "search_seconds"},
                "batched_qps": nq / total if total else float("inf"),
                "embed_seconds": embed_s, "search_seconds": scores["search_seconds"]}

    result = {
        "spec": spec.name,
        "backend": embedder.backend,
        "queries": nq,
        "catalog_images": n_cat,
        "catalog_built": catalog.built,
        "catalog_seconds": round(catalog.seconds, 2),
        "relevance": "a neighbour is relevant when its class equals the query's class",
        "mAP_definition": ("mAP: mean over queries of average precision over the full ranking of "
                           "the catalog (all same-class items relevant); mAP@10: AP over the top 10, "
                           "normalised by min(10, relevant items)"),
        "qps_definition": ("batched_qps: queries / (embedding seconds + exact top-10 search seconds), "
                           f"batches of {SEARCH_BATCH}; single_qps: one query at a time, embed + top-5"),
        "rows": [row(f"{spec.name} penultimate ({embedder.backend})", model_scores, embed_seconds,
                     catalog.vectors.shape[1]),
                 row("raw pixels (baseline)", raw_scores, raw_embed_seconds, 784)],
        "single_queries": singles,
        "single_qps": singles / single_seconds if single_seconds else float("inf"),
        "single_ms": {"embed": 1000 * single_embed / max(singles, 1),
                      "search": 1000 * single_search / max(singles, 1)},
        "model_sha256": embedder.source_sha256,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    arts = artifacts.spec_artifacts(spec.name, root)
    name = f"evaluation-{embedder.backend}.json" if (catalog_limit, query_limit) == (None, None) else \
        f"evaluation-{embedder.backend}-n{n_cat}-q{nq}.json"
    artifacts.write_json(arts.recommend_dir / name, result)
    result["file"] = str(arts.recommend_dir / name)
    return result
