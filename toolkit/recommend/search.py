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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import CLASS_NAMES
from toolkit.core import artifacts, data
from toolkit.core.errors import UsageError
from toolkit.core.images import load_image
from toolkit.recommend.catalog import Catalog, catalog_size, load_catalog, search
from toolkit.recommend.embedding import Progress, get_embedder
from toolkit.specs import get_spec

STRIP_MAX = 20  # neighbours drawn in the PNG strip; a larger k is listed in full, drawn in part


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


def dataset_and_catalog(exp, *, backend, root, data_dir, catalog_limit, progress, rebuild=False):
    spec = get_spec(exp)
    dataset = data.load(data_dir)
    catalog_size(dataset, catalog_limit)  # before any model loads or any image is embedded
    embedder = get_embedder(spec.name, backend=backend, root=root)
    catalog = load_catalog(spec.name, embedder, dataset, root=root, limit=catalog_limit,
                           rebuild=rebuild, progress=progress)
    return spec, dataset, embedder, catalog


@dataclass(frozen=True)
class RecommendRequest:
    """One query: a test-set index, an image file, or (for checks) a training-set index, which is
    itself in the catalog; and where its embeddings and catalog come from."""

    exp: str
    index: int | None = None
    image: Path | None = None
    train_index: int | None = None
    k: int = 5
    backend: str = "keras"
    root: Path | None = None
    data_dir: Path | None = None
    catalog_limit: int | None = None


@dataclass(frozen=True)
class _Query:
    pixels: np.ndarray
    label: int | None
    text: str
    tag: str
    notes: list[str]


def recommend(request: RecommendRequest, progress: Progress | None = None) -> Recommendation:
    """Top-k catalog items for one query; bad input fails before any model loads."""
    given = [name for name, v in (("--index", request.index), ("--image", request.image),
                                  ("train_index", request.train_index)) if v is not None]
    if len(given) != 1:
        raise UsageError("give exactly one query: --index I (a test image) or --image FILE"
                         + (f"; got {' and '.join(given)}" if given else ""))
    if request.k < 1:
        raise UsageError(f"-k must be at least 1, got {request.k}")
    # The same conversion as `toolkit predict`, before anything else.
    converted = load_image(request.image) if request.image is not None else None
    dataset = data.load(request.data_dir)
    n_catalog = catalog_size(dataset, request.catalog_limit)
    k = request.k
    if k > n_catalog:  # checked before the catalog is built: that takes minutes on a CPU
        raise UsageError(f"-k {k} is more than the {n_catalog:,} catalog images; use 1..{n_catalog}")
    query = _query(request, dataset, converted)
    spec, dataset, embedder, catalog = dataset_and_catalog(
        request.exp, backend=request.backend, root=request.root, data_dir=request.data_dir,
        catalog_limit=request.catalog_limit, progress=progress)
    vector = embedder.embed(data.to_model_input(query.pixels[None]))
    idx, sims = search(catalog.vectors, vector, k)
    neighbours = [{"rank": r + 1, "index": int(i), "label": int(catalog.labels[i]),
                   "class": CLASS_NAMES[int(catalog.labels[i])], "similarity": float(s)}
                  for r, (i, s) in enumerate(zip(idx[0], sims[0], strict=True))]
    arts = artifacts.spec_artifacts(spec.name, request.root)
    drawn = neighbours[:STRIP_MAX]
    shown = f"{k}" if k <= STRIP_MAX else f"the first {STRIP_MAX} of {k:,}"
    label = query.label
    strip = plot_strip(
        query_pixels=query.pixels,
        query_title=query.text if label is None else f"{query.text}\n{CLASS_NAMES[label]}",
        query_label=label, images=[dataset.x_train[n["index"]] for n in drawn], neighbours=drawn,
        title=f"{spec.name}: {shown} most similar training-catalog items ({embedder.backend})",
        target=arts.recommend_dir / f"strip-{query.tag}.png")
    return Recommendation(spec.name, embedder.backend, query.text, label, neighbours, query.notes, strip,
                          catalog)


def _query(request: RecommendRequest, dataset: data.Dataset, converted: tuple | None) -> _Query:
    if request.index is not None:
        index = request.index
        if not 0 <= index < len(dataset.y_test):
            raise UsageError(f"--index {index} is outside the test set; use 0..{len(dataset.y_test) - 1}")
        return _Query(dataset.x_test[index], int(dataset.y_test[index]), f"test image {index}",
                      f"test{index}", [])
    if request.train_index is not None:
        index = request.train_index
        if not 0 <= index < len(dataset.y_train):
            raise UsageError(f"train_index {index} is outside the training set")
        return _Query(dataset.x_train[index], int(dataset.y_train[index]), f"training image {index}",
                      f"train{index}", [])
    pixels, notes = converted
    image = Path(request.image)
    tag = "file-" + re.sub(r"[^A-Za-z0-9_.-]", "_", image.stem)[:60]
    return _Query(pixels, None, f"file {image.name}", tag, notes)


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
