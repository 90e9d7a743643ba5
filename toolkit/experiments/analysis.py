"""The seed study's analyses of a trained spec, as figures, tables and numbers.

    analyze(exp)   training curves, per-class accuracy beside the seed's Table 5, confusion matrix
                   with the hardest class pairs, t-SNE of raw pixels and of penultimate
                   activations, feature maps of the layers the spec's family names, or a
                   two-unit activation scatter (the seed's DNNs)     -> ROOT/NAME/analysis/

Stability over seeds is toolkit.experiments.stability; the figures toolkit.experiments.analysis_plots.
Every file goes through toolkit.core.artifacts' atomic writes. TensorFlow is imported only inside
the functions that run a model; the plotting and statistics need numpy, matplotlib, sklearn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import CLASS_NAMES
from toolkit.core import artifacts, data
from toolkit.core.errors import ArtifactError, UsageError
from toolkit.experiments.analysis_plots import (
    plot_activation_scatter,
    plot_confusion,
    plot_curves,
    plot_feature_maps,
    plot_tsne,
)
from toolkit.specs import Spec, get_spec

# The seed's Table 5, "Classification accuracies of individual classes", as printed there.
SEED_TABLE5: dict[str, tuple[float, ...]] = {
    "CNN_1L_Dropout_Exp6": (0.94, 0.99, 0.90, 0.95, 0.93, 0.99, 0.81, 0.99, 0.99, 0.97),
    "CNN_2L_Dropout_Exp2": (0.89, 0.99, 0.81, 0.95, 0.90, 0.98, 0.78, 0.97, 0.99, 0.97),
}

TSNE_SAMPLES = 2000
TSNE_PCA_DIMS = 50
HARDEST_PAIRS = 5
Progress = Callable[[str, int, int], None]  # (what, done, total)


# ---------------------------------------------------------------- numbers


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int = len(CLASS_NAMES)) -> np.ndarray:
    """counts[true, predicted]."""
    return np.bincount(np.asarray(y_true) * n + np.asarray(y_pred), minlength=n * n).reshape(n, n)


def per_class_rows(cm: np.ndarray, spec_name: str | None = None) -> list[dict[str, Any]]:
    """Per class: images, correct, accuracy (the class's recall: the seed's "classification
    accuracy of an individual class"), precision, and the seed's Table 5 value if it has one."""
    seed_values = SEED_TABLE5.get(spec_name or "")
    rows = []
    for i, name in enumerate(CLASS_NAMES):
        images, correct, predicted = int(cm[i].sum()), int(cm[i, i]), int(cm[:, i].sum())
        rows.append({
            "label": i,
            "class": name,
            "images": images,
            "correct": correct,
            "accuracy": correct / images if images else float("nan"),
            "precision": correct / predicted if predicted else float("nan"),
            "seed_table5": seed_values[i] if seed_values else None,
        })
    return rows


def hardest_pairs(cm: np.ndarray, k: int = HARDEST_PAIRS) -> list[dict[str, Any]]:
    """Unordered class pairs ranked by confusions in both directions."""
    n = cm.shape[0]
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            total = int(cm[a, b] + cm[b, a])
            if total:
                pairs.append({"a": CLASS_NAMES[a], "b": CLASS_NAMES[b], "a_as_b": int(cm[a, b]),
                              "b_as_a": int(cm[b, a]), "total": total,
                              "share_of_errors": total / max(1, int(cm.sum() - np.trace(cm)))})
    pairs.sort(key=lambda p: (-p["total"], p["a"], p["b"]))
    return pairs[:k]


def knn_agreement(points: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Share of points whose k nearest neighbours (itself excluded) mostly share its class:
    one number for "how well separated are the classes in this 2-D map"."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(points)
    _, idx = nn.kneighbors(points)
    votes = labels[idx[:, 1:]]
    majority = np.array([np.bincount(v, minlength=len(CLASS_NAMES)).argmax() for v in votes])
    return float(np.mean(majority == labels))


def tsne_2d(features: np.ndarray, *, seed: int, max_iter: int = 1000) -> np.ndarray:
    """PCA to 50 dimensions (standard practice: denoises and speeds t-SNE), then 2-D t-SNE."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    if x.shape[1] > TSNE_PCA_DIMS and len(x) > TSNE_PCA_DIMS:
        x = PCA(n_components=TSNE_PCA_DIMS, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(5.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto", max_iter=max(250, max_iter)).fit_transform(x)


# ---------------------------------------------------------------- analyze


@dataclass
class AnalysisResult:
    spec: str
    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    @property
    def summary_md(self) -> Path:
        return next(p for p in self.files if p.name == "summary.md")


def _predict(model, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    import warnings

    # Keras warns that a loaded model's inputs are a list of one; the tensor is what it expects.
    warnings.filterwarnings("ignore", message=r".*structure of `inputs`.*")
    return np.concatenate([np.asarray(model(x[i:i + batch], training=False))
                           for i in range(0, len(x), batch)])


@dataclass(frozen=True)
class AnalysisRequest:
    """What `toolkit analyze` analyses: the spec's current run, on (a prefix of) the test set."""

    exp: str
    root: Path | None = None
    data_dir: Path | None = None
    sample: int = 0  # the test image whose feature maps are drawn
    tsne_samples: int = TSNE_SAMPLES
    seed: int = 0  # of the t-SNE sample and map
    limit_test: int | None = None
    tsne_iter: int = 1000


STEPS = ("predict", "curves", "confusion", "t-SNE raw pixels", "t-SNE embeddings", "feature maps", "summary")


def analyze(request: AnalysisRequest, progress: Progress | None = None) -> AnalysisResult:
    """All single-model analyses of the spec's current run, written under analysis/."""
    from toolkit.specs.models import embedding_model, load_model

    spec, arts, metrics, history = _trained_run(request.exp, request.root)
    dataset = data.load(request.data_dir)
    n_test = _checked_test_size(request, dataset)
    tick = _ticker(progress)
    out = arts.analysis_dir
    model = load_model(arts.model)
    started = time.perf_counter()
    tick("predict")
    x_test = data.to_model_input(dataset.x_test[:n_test])
    y_test = dataset.y_test[:n_test].astype(np.int64)
    cm = confusion_matrix(y_test, _predict(model, x_test).argmax(axis=1))
    accuracy = float(np.trace(cm) / cm.sum())
    tick("curves")
    files = [plot_curves(history, f"{spec.name}: training curves ({len(history['loss'])} epochs)",
                         out / "training_curves.png")]
    tick("confusion")
    files.append(plot_confusion(cm, f"{spec.name}: confusion matrix on {n_test:,} test images "
                                f"(accuracy {accuracy:.2%})", out / "confusion_matrix.png"))
    embed = embedding_model(model)
    chosen, tsne = _tsne_figure(spec, embed, x_test, y_test, request, out, tick)
    files.append(tsne.pop("file"))
    tick("feature maps")
    sample = _sample_figure(spec, model, embed, dataset, request.sample, (x_test[chosen], y_test[chosen]),
                            out)
    files.append(sample.pop("file"))
    tick("summary")
    rows = per_class_rows(cm, spec.name)
    summary = {
        "spec": spec.name, "model_sha256": artifacts.sha256_file(arts.model), "run_id": metrics.get("run_id"),
        "epochs": len(history["loss"]), "test_images": n_test, "test_accuracy": accuracy,
        "test_accuracy_in_metrics": metrics.get("test_accuracy"), "per_class": rows,
        "confusion_matrix": cm.tolist(), "hardest_pairs": hardest_pairs(cm),
        "hardest_class": min(rows, key=lambda r: r["accuracy"])["class"], "tsne": tsne, "sample": sample,
        "seconds": round(time.perf_counter() - started, 1),
    }
    files += _write_summary(summary, history, files, out)
    tick("done")
    return AnalysisResult(spec.name, summary, files)


def _trained_run(exp: str, root: Path | None) -> tuple[Spec, artifacts.SpecArtifacts, dict[str, Any], dict]:
    spec = get_spec(exp)
    arts = artifacts.spec_artifacts(spec.name, root)
    metrics = arts.require_trained()
    history = artifacts.read_json(arts.history, what="training history",
                                  fix=f"Retrain it: toolkit train --exp {spec.name}")
    if not isinstance(history, dict) or not history.get("loss"):
        raise ArtifactError(f"{arts.history}: no per-epoch loss recorded. Retrain: toolkit train "
                            f"--exp {spec.name}")
    return spec, arts, metrics, history


def _checked_test_size(request: AnalysisRequest, dataset: data.Dataset) -> int:
    n_all = len(dataset.y_test)
    n_test = n_all if request.limit_test is None else min(request.limit_test, n_all)
    if n_test < 10:
        raise UsageError(f"limit_test must be at least 10, got {request.limit_test}")
    if not 0 <= request.sample < n_all:
        raise UsageError(f"--sample {request.sample} is outside the test set; use 0..{n_all - 1}")
    if request.tsne_samples < 20:
        raise UsageError(f"--tsne-samples must be at least 20, got {request.tsne_samples}")
    return n_test


def _ticker(progress: Progress | None) -> Callable[[str], None]:
    step = 0

    def tick(what: str) -> None:
        nonlocal step
        if progress:
            progress(what, step, len(STEPS))
        step += 1

    return tick


def _tsne_figure(spec: Spec, embed, x_test: np.ndarray, y_test: np.ndarray, request: AnalysisRequest,
                 out: Path, tick: Callable[[str], None]) -> tuple[np.ndarray, dict[str, Any]]:
    """(the seeded sample's indices, the t-SNE summary with its figure's path under "file")."""
    seed, n_test = request.seed, len(y_test)
    chosen = np.sort(np.random.default_rng(seed).choice(n_test, size=min(request.tsne_samples, n_test),
                                                        replace=False))
    emb = _predict(embed, x_test[chosen])
    tick("t-SNE raw pixels")
    raw_map = tsne_2d(x_test[chosen].reshape(len(chosen), -1), seed=seed, max_iter=request.tsne_iter)
    tick("t-SNE embeddings")
    emb_map = tsne_2d(emb, seed=seed, max_iter=request.tsne_iter)
    labels = y_test[chosen]
    raw_agree, emb_agree = knn_agreement(raw_map, labels), knn_agreement(emb_map, labels)
    path = plot_tsne([("raw pixels (784)", raw_map, raw_agree),
                      (f"penultimate activations ({emb.shape[1]})", emb_map, emb_agree)],
                     labels, f"{spec.name}: t-SNE of {len(chosen):,} test images (seeded sample, seed "
                     f"{seed})", out / "tsne.png")
    return chosen, {"file": path, "samples": len(chosen), "seed": seed, "pca_dims": TSNE_PCA_DIMS,
                    "iterations": request.tsne_iter, "knn5_agreement_raw": raw_agree,
                    "knn5_agreement_embedding": emb_agree, "embedding_dim": int(emb.shape[1])}


def _sample_figure(spec: Spec, model, embed, dataset: data.Dataset, index: int,
                   tsne_sample: tuple[np.ndarray, np.ndarray], out: Path) -> dict[str, Any]:
    sample_x = data.to_model_input(dataset.x_test[index:index + 1])
    label = int(dataset.y_test[index])
    predicted = int(_predict(model, sample_x).argmax())
    caption = f"{CLASS_NAMES[label]}, predicted {CLASS_NAMES[predicted]}"
    inner = _inner_views(spec, model, embed, sample_x, tsne_sample[0], tsne_sample[1], index, caption, out)
    return {"index": index, "label": CLASS_NAMES[label], "predicted": CLASS_NAMES[predicted], **inner}


def _write_summary(summary: dict[str, Any], history: dict[str, list[float]], files: list[Path],
                   out: Path) -> list[Path]:
    summary["files"] = [p.name for p in files] + ["analysis.json", "summary.md"]
    artifacts.write_json(out / "analysis.json", summary)
    artifacts.write_text(out / "summary.md", summary_markdown(summary, history))
    return [out / "analysis.json", out / "summary.md"]


def _inner_views(spec: Spec, model, embed, sample_x, x_sample, labels, index: int, caption: str,
                 out: Path) -> dict[str, Any]:
    """Feature maps of the layers the spec's family names (toolkit.families), or, for a family that
    names none (the seed's DNNs), a scatter of two embedding units."""
    from toolkit.core.tf import keras

    names = spec.family_entry.feature_maps(spec.arch)
    if names:
        probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
        acts = [np.asarray(a)[0] for a in probe(sample_x, training=False)]
        layers = list(zip(names, acts, strict=True))
        path = plot_feature_maps(sample_x[0, ..., 0], layers,
                                 f"{spec.name}: feature maps of test image {index} ({caption})",
                                 out / "feature_maps.png")
        return {"file": path, "view": "feature_maps",
                "layers": [{"name": n, "shape": list(a.shape)} for n, a in layers]}
    acts = _predict(embed, x_sample)
    point = _predict(embed, sample_x)[0]
    variance = acts.var(axis=0)
    units = tuple(int(u) for u in np.argsort(-variance)[:2])
    layer = embed.layers[-1].name
    path = plot_activation_scatter(
        acts, units, labels, (f"test image {index}\n({caption})", point), layer,
        f"{spec.name}: two hidden activations (layer '{layer}', the 2 highest-variance units) "
        f"on {len(acts):,} test images", out / "activation_scatter.png")
    return {"file": path, "view": "activation_scatter",
            "layers": [{"name": layer, "units": list(units), "shape": [int(acts.shape[1])]}]}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def summary_markdown(summary: dict[str, Any], history: dict[str, list[float]]) -> str:
    spec = summary["spec"]
    has_seed = any(r["seed_table5"] is not None for r in summary["per_class"])
    lines = [
        f"# Analysis of {spec}",
        "",
        f"Run `{summary['run_id']}`, {summary['epochs']} epochs; model sha256 "
        f"`{summary['model_sha256'][:16]}…`. Test accuracy on {summary['test_images']:,} test "
        f"images: **{summary['test_accuracy']:.4f}**.",
        "",
        "## Training curves",
        "",
        "![training curves](training_curves.png)",
        "",
        "| epoch | loss | accuracy | val_loss | val_accuracy |",
        "|---:|---:|---:|---:|---:|",
    ]
    for e in range(len(history["loss"])):
        lines.append(f"| {e + 1} | {history['loss'][e]:.4f} | {history['accuracy'][e]:.4f} | "
                     f"{_fmt(history.get('val_loss', [None] * (e + 1))[e])} | "
                     f"{_fmt(history.get('val_accuracy', [None] * (e + 1))[e])} |")
    lines += ["", "## Per-class accuracy" + (" beside the seed's Table 5" if has_seed else ""), "",
              "Accuracy of a class = share of its test images classified correctly (its recall).", ""]
    header = "| class | images | correct | accuracy | precision |" + (" seed Table 5 | difference |"
                                                                        if has_seed else "")
    lines += [header, "|---|---:|---:|---:|---:|" + ("---:|---:|" if has_seed else "")]
    for r in summary["per_class"]:
        row = (f"| {r['class']} | {r['images']} | {r['correct']} | {r['accuracy']:.4f} | "
               f"{_fmt(r['precision'])} |")
        if has_seed:
            row += f" {r['seed_table5']:.2f} | {r['accuracy'] - r['seed_table5']:+.3f} |"
        lines.append(row)
    lines += ["", f"Hardest class: **{summary['hardest_class']}**.", "",
              "## Confusion matrix", "", "![confusion matrix](confusion_matrix.png)", "",
              "Hardest class pairs (confusions in both directions):", "",
              "| pair | A→B | B→A | total | share of all errors |", "|---|---:|---:|---:|---:|"]
    for p in summary["hardest_pairs"]:
        lines.append(f"| {p['a']} / {p['b']} | {p['a_as_b']} | {p['b_as_a']} | {p['total']} | "
                     f"{p['share_of_errors']:.1%} |")
    t = summary["tsne"]
    lines += ["", "## t-SNE", "", "![t-SNE](tsne.png)", "",
              f"{t['samples']:,} test images drawn with seed {t['seed']}; PCA to {t['pca_dims']} "
              "dimensions, then t-SNE. Share of points whose 5 nearest neighbours in the 2-D map are "
              f"mostly of their own class: raw pixels {t['knn5_agreement_raw']:.1%}, penultimate "
              f"activations ({t['embedding_dim']}-d) {t['knn5_agreement_embedding']:.1%}.", ""]
    s = summary["sample"]
    if s["view"] == "feature_maps":
        shapes = ", ".join(f"{layer['name']} {'x'.join(map(str, layer['shape']))}" for layer in s["layers"])
        lines += ["## Feature maps", "", "![feature maps](feature_maps.png)", "",
                  f"Test image {s['index']} ({s['label']}, predicted {s['predicted']}): {shapes}.", ""]
    else:
        layer = s["layers"][0]
        lines += ["## Hidden activations", "", "![activation scatter](activation_scatter.png)", "",
                  f"Units {layer['units'][0]} and {layer['units'][1]} of layer `{layer['name']}` (the two "
                  f"with the highest variance); the star is test image {s['index']} ({s['label']}, "
                  f"predicted {s['predicted']}).", ""]
    return "\n".join(lines) + "\n"
