"""The seed study's analyses of a trained spec, as figures, tables and numbers.

    analyze(exp)            training curves, per-class accuracy beside the seed's Table 5,
                            confusion matrix with the hardest class pairs, t-SNE of raw pixels and
                            of penultimate activations, feature maps of the layers the
                            spec's family names, or a two-unit activation scatter (the
                            seed's DNNs)                         -> ROOT/NAME/analysis/
    stability(exps, seeds)  trains seeds 0..N-1 through `train.train(promote=False)` (which
                            reuses completed runs) and summarises test accuracy and the
                            per-epoch validation curve over seeds -> ROOT/NAME/analysis/

Every file goes through toolkit.artifacts' atomic writes. TensorFlow is imported only inside
the functions that run a model; the plotting and statistics need numpy, matplotlib, sklearn.
"""

from __future__ import annotations

import io
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import CLASS_NAMES, artifacts, data
from toolkit.errors import ArtifactError, UsageError
from toolkit.specs import Spec, get_spec

# The seed's Table 5, "Classification accuracies of individual classes", as printed there.
SEED_TABLE5: dict[str, tuple[float, ...]] = {
    "CNN_1L_Dropout_Exp6": (0.94, 0.99, 0.90, 0.95, 0.93, 0.99, 0.81, 0.99, 0.99, 0.97),
    "CNN_2L_Dropout_Exp2": (0.89, 0.99, 0.81, 0.95, 0.90, 0.98, 0.78, 0.97, 0.99, 0.97),
}

TSNE_SAMPLES = 2000
TSNE_PCA_DIMS = 50
HARDEST_PAIRS = 5
MAX_MAPS_PER_LAYER = 64

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


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, target: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    artifacts.write_bytes(target, buffer.getvalue())
    return target


def _class_colors():
    return _plt().get_cmap("tab10").colors


def plot_curves(history: dict[str, list[float]], title: str, target: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, history[key], "o-", label=f"train {label}", ms=3)
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s-", label=f"validation {label}", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
        step = 1 if len(epochs) <= 12 else 2 if len(epochs) <= 30 else len(epochs) // 12
        ax.set_xticks(epochs[::step])
    fig.suptitle(title)
    return _save(fig, target)


def plot_confusion(cm: np.ndarray, title: str, target: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _save(fig, target)


def plot_tsne(maps: Sequence[tuple[str, np.ndarray, float]], labels: np.ndarray, title: str,
              target: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, len(maps), figsize=(7.2 * len(maps), 6.6), squeeze=False)
    colors = _class_colors()
    for ax, (name, points, agreement) in zip(axes[0], maps, strict=True):
        for c, cname in enumerate(CLASS_NAMES):
            mask = labels == c
            ax.scatter(points[mask, 0], points[mask, 1], s=5, color=colors[c], label=cname, alpha=0.8)
        ax.set_title(f"{name}\n5-NN class agreement in this map: {agreement:.1%}")
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=3, frameon=False)
    fig.suptitle(title)
    return _save(fig, target)


def plot_feature_maps(image: np.ndarray, layers: Sequence[tuple[str, np.ndarray]], title: str,
                      target: Path) -> Path:
    """The input, then each layer's channels as a grid (up to 64 per layer)."""
    plt = _plt()
    widths = [2.2] + [5.2] * len(layers)
    fig = plt.figure(figsize=(sum(widths) + 0.6, 6.0))
    subfigs = fig.subfigures(1, len(layers) + 1, width_ratios=widths, wspace=0.02)
    ax = subfigs[0].subplots()
    ax.imshow(image, cmap="gray")
    ax.set_title("input", fontsize=10)
    ax.axis("off")
    for sub, (name, act) in zip(subfigs[1:], layers, strict=True):
        channels = act.shape[-1]
        shown = min(channels, MAX_MAPS_PER_LAYER)
        cols = math.ceil(math.sqrt(shown))
        rows = math.ceil(shown / cols)
        grid = sub.subplots(rows, cols, gridspec_kw={"wspace": 0.05, "hspace": 0.05})
        for k, cell in enumerate(np.ravel(grid)):
            cell.axis("off")
            if k < shown:
                cell.imshow(act[..., k], cmap="viridis")
        suffix = f", first {shown} of {channels} channels" if shown < channels else f", {channels} channels"
        sub.suptitle(f"{name}: {act.shape[0]}x{act.shape[1]}{suffix}", fontsize=10)
    fig.suptitle(f"{title}\nbrighter = stronger activation; each map scaled on its own", y=1.08)
    return _save(fig, target)


def plot_activation_scatter(acts: np.ndarray, units: tuple[int, int], labels: np.ndarray,
                            sample: tuple[str, np.ndarray] | None, layer: str, title: str,
                            target: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    colors = _class_colors()
    for c, cname in enumerate(CLASS_NAMES):
        mask = labels == c
        ax.scatter(acts[mask, units[0]], acts[mask, units[1]], s=6, color=colors[c], label=cname,
                   alpha=0.7)
    if sample is not None:
        text, point = sample
        ax.scatter([point[units[0]]], [point[units[1]]], marker="*", s=220, color="black",
                   edgecolor="white", label=text, zorder=5)
    ax.set_xlabel(f"{layer} unit {units[0]} activation")
    ax.set_ylabel(f"{layer} unit {units[1]} activation")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=2, frameon=False)
    return _save(fig, target)


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


def analyze(
    exp: str,
    *,
    root: str | Path | None = None,
    data_dir: str | Path | None = None,
    sample: int = 0,
    tsne_samples: int = TSNE_SAMPLES,
    seed: int = 0,
    limit_test: int | None = None,
    tsne_iter: int = 1000,
    progress: Progress | None = None,
) -> AnalysisResult:
    """All single-model analyses of the spec's current run, written under analysis/."""
    spec = get_spec(exp)
    arts = artifacts.spec_artifacts(spec.name, root)
    metrics = arts.require_trained()
    history = artifacts.read_json(arts.history, what="training history",
                                  fix=f"Retrain it: toolkit train --exp {spec.name}")
    if not isinstance(history, dict) or not history.get("loss"):
        raise ArtifactError(f"{arts.history}: no per-epoch loss recorded. Retrain: toolkit train "
                            f"--exp {spec.name}")
    dataset = data.load(data_dir)
    n_test = len(dataset.y_test) if limit_test is None else min(limit_test, len(dataset.y_test))
    if n_test < 10:
        raise UsageError(f"limit_test must be at least 10, got {limit_test}")
    if not 0 <= sample < len(dataset.y_test):
        raise UsageError(f"--sample {sample} is outside the test set; use 0..{len(dataset.y_test) - 1}")
    if tsne_samples < 20:
        raise UsageError(f"--tsne-samples must be at least 20, got {tsne_samples}")
    steps = ["predict", "curves", "confusion", "t-SNE raw pixels", "t-SNE embeddings",
             "feature maps", "summary"]
    step = 0

    def tick(what: str) -> None:
        nonlocal step
        if progress:
            progress(what, step, len(steps))
        step += 1

    from toolkit.models import embedding_model, load_model

    out = arts.analysis_dir
    model = load_model(arts.model)
    files: list[Path] = []
    started = time.perf_counter()

    tick("predict")
    x_test = data.to_model_input(dataset.x_test[:n_test])
    y_test = dataset.y_test[:n_test].astype(np.int64)
    probabilities = _predict(model, x_test)
    y_pred = probabilities.argmax(axis=1)
    cm = confusion_matrix(y_test, y_pred)
    rows = per_class_rows(cm, spec.name)
    pairs = hardest_pairs(cm)
    accuracy = float(np.trace(cm) / cm.sum())

    tick("curves")
    files.append(plot_curves(history, f"{spec.name}: training curves ({len(history['loss'])} epochs)",
                             out / "training_curves.png"))
    tick("confusion")
    files.append(plot_confusion(cm, f"{spec.name}: confusion matrix on {n_test:,} test images "
                                f"(accuracy {accuracy:.2%})", out / "confusion_matrix.png"))

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n_test, size=min(tsne_samples, n_test), replace=False))
    embed = embedding_model(model)
    emb = _predict(embed, x_test[chosen])
    tick("t-SNE raw pixels")
    raw_map = tsne_2d(x_test[chosen].reshape(len(chosen), -1), seed=seed, max_iter=tsne_iter)
    tick("t-SNE embeddings")
    emb_map = tsne_2d(emb, seed=seed, max_iter=tsne_iter)
    labels = y_test[chosen]
    raw_agree, emb_agree = knn_agreement(raw_map, labels), knn_agreement(emb_map, labels)
    files.append(plot_tsne(
        [("raw pixels (784)", raw_map, raw_agree),
         (f"penultimate activations ({emb.shape[1]})", emb_map, emb_agree)],
        labels, f"{spec.name}: t-SNE of {len(chosen):,} test images (seeded sample, seed {seed})",
        out / "tsne.png"))

    tick("feature maps")
    sample_x = data.to_model_input(dataset.x_test[sample:sample + 1])
    sample_label = int(dataset.y_test[sample])
    sample_pred = int(_predict(model, sample_x).argmax())
    caption = f"{CLASS_NAMES[sample_label]}, predicted {CLASS_NAMES[sample_pred]}"
    inner = _inner_views(spec, model, embed, sample_x, x_test[chosen], labels, sample, caption, out)
    files.append(inner.pop("file"))

    tick("summary")
    summary = {
        "spec": spec.name,
        "model_sha256": artifacts.sha256_file(arts.model),
        "run_id": metrics.get("run_id"),
        "epochs": len(history["loss"]),
        "test_images": n_test,
        "test_accuracy": accuracy,
        "test_accuracy_in_metrics": metrics.get("test_accuracy"),
        "per_class": rows,
        "confusion_matrix": cm.tolist(),
        "hardest_pairs": pairs,
        "hardest_class": min(rows, key=lambda r: r["accuracy"])["class"],
        "tsne": {"samples": len(chosen), "seed": seed, "pca_dims": TSNE_PCA_DIMS, "iterations": tsne_iter,
                 "knn5_agreement_raw": raw_agree, "knn5_agreement_embedding": emb_agree,
                 "embedding_dim": int(emb.shape[1])},
        "sample": {"index": sample, "label": CLASS_NAMES[sample_label],
                   "predicted": CLASS_NAMES[sample_pred], **inner},
        "seconds": round(time.perf_counter() - started, 1),
    }
    summary["files"] = [p.name for p in files] + ["analysis.json", "summary.md"]
    artifacts.write_json(out / "analysis.json", summary)
    files.append(out / "analysis.json")
    artifacts.write_text(out / "summary.md", summary_markdown(summary, history))
    files.append(out / "summary.md")
    tick("done")
    return AnalysisResult(spec.name, summary, files)


def _inner_views(spec: Spec, model, embed, sample_x, x_sample, labels, index: int, caption: str,
                 out: Path) -> dict[str, Any]:
    """Feature maps of the layers the spec's family names (toolkit.families), or, for a family that
    names none (the seed's DNNs), a scatter of two embedding units."""
    from toolkit._tf import keras

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


# ---------------------------------------------------------------- stability


@dataclass
class SeedRun:
    seed: int
    run_id: str
    test_accuracy: float
    val_accuracy: list[float]
    val_loss: list[float]
    reused: bool


@dataclass
class Stability:
    spec: str
    epochs: int
    limit_train: int | None
    runs: list[SeedRun]

    def stats(self) -> dict[str, Any]:
        test = np.array([r.test_accuracy for r in self.runs])
        val = np.array([r.val_accuracy for r in self.runs])  # [seeds, epochs]
        ddof = 1 if len(test) > 1 else 0
        per_epoch_std = val.std(axis=0, ddof=ddof)
        jitter = np.abs(np.diff(val, axis=1)).mean() if val.shape[1] > 1 else 0.0
        return {
            "spec": self.spec,
            "seeds": [r.seed for r in self.runs],
            "epochs": self.epochs,
            "limit_train": self.limit_train,
            "test_accuracy": {
                "values": test.tolist(), "mean": float(test.mean()), "std": float(test.std(ddof=ddof)),
                "min": float(test.min()), "max": float(test.max()),
                "range": float(test.max() - test.min()),
            },
            "val_accuracy_per_epoch": {
                "mean": val.mean(axis=0).tolist(), "std": per_epoch_std.tolist(),
                "min": val.min(axis=0).tolist(), "max": val.max(axis=0).tolist(),
                "final_mean": float(val[:, -1].mean()), "final_std": float(val[:, -1].std(ddof=ddof)),
                "mean_std_over_epochs": float(per_epoch_std.mean()),
                "max_range_over_epochs": float((val.max(axis=0) - val.min(axis=0)).max()),
                "mean_epoch_to_epoch_change": float(jitter),
            },
            "runs": [r.__dict__ for r in self.runs],
        }


RunHook = Callable[[str, int, str], None]  # (spec, seed, event) with event "start"/"done"


def stability(
    exps: Sequence[str],
    seeds: int,
    *,
    epochs: int | None = None,
    limit_train: int | None = None,
    root: str | Path | None = None,
    data_dir: str | Path | None = None,
    on_run: RunHook | None = None,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
) -> list[Stability]:
    """Train (or reuse) seeds 0..seeds-1 of each spec, never promoting them, and collect curves."""
    from toolkit import train as training

    if seeds < 2:
        raise UsageError(f"--seeds must be at least 2 to measure stability, got {seeds}")
    specs = [get_spec(e) for e in exps]
    if len({s.name for s in specs}) != len(specs):
        raise UsageError("give each --exp once; stability compares different specs")
    results = []
    for spec in specs:
        runs = []
        for s in range(seeds):
            if on_run:
                on_run(spec.name, s, "start")
            result = training.train(spec, seed=s, epochs=epochs, limit_train=limit_train, root=root,
                                    data_dir=data_dir, promote=False, on_epoch=on_epoch)
            history = artifacts.read_json(result.run_dir / "history.json", what="training history")
            runs.append(SeedRun(s, result.run_dir.name, float(result.metrics["test_accuracy"]),
                                [float(v) for v in history["val_accuracy"]],
                                [float(v) for v in history["val_loss"]], result.reused))
            if on_run:
                on_run(spec.name, s, "reused" if result.reused else "done")
        results.append(Stability(spec.name, epochs or spec.epochs, limit_train, runs))
    return results


def plot_stability(results: Sequence[Stability], target: Path) -> Path:
    plt = _plt()
    fig, (ax, box) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2.2, 1]})
    colors = _plt().get_cmap("tab10").colors
    for c, res in enumerate(results):
        st = res.stats()["val_accuracy_per_epoch"]
        x = np.arange(1, len(st["mean"]) + 1)
        mean, std = np.array(st["mean"]), np.array(st["std"])
        for run in res.runs:
            ax.plot(x, run.val_accuracy, color=colors[c], alpha=0.25, lw=0.8)
        ax.errorbar(x, mean, yerr=std, fmt="o-", color=colors[c], ms=3, capsize=3,
                    label=f"{res.spec}: mean ± 1 std of {len(res.runs)} seeds")
        if len(x) > 1:
            ax.fill_between(x, mean - std, mean + std, color=colors[c], alpha=0.15)
    n_epochs = len(results[0].runs[0].val_accuracy)
    ax.set_xlim(0.5, n_epochs + 0.5)
    ax.set_xticks(range(1, n_epochs + 1))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("validation accuracy per epoch over seeds (thin lines: single seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    names = [r.spec for r in results]
    box.boxplot([[run.test_accuracy for run in r.runs] for r in results], showmeans=True)
    for c, res in enumerate(results):
        values = [run.test_accuracy for run in res.runs]
        box.scatter(np.full(len(values), c + 1) + np.linspace(-0.08, 0.08, len(values)), values,
                    color=colors[c], zorder=3, s=18)
    box.set_xticks(range(1, len(names) + 1), names, rotation=12, ha="right", fontsize=8)
    box.set_ylabel("test accuracy")
    box.set_title("test accuracy over seeds")
    box.grid(alpha=0.3, axis="y")
    first = results[0]
    setting = f"{first.epochs} epoch{'s' if first.epochs > 1 else ''}, " + (
        f"{first.limit_train:,} training images" if first.limit_train else "full training split")
    fig.suptitle(f"Stability over seeds 0..{len(results[0].runs) - 1} ({setting})")
    return _save(fig, target)


def stability_file_stem(results: Sequence[Stability]) -> str:
    others = [r.spec for r in results[1:]]
    return "stability" + "".join(f"_vs_{re.sub(r'[^A-Za-z0-9_]', '', o)}" for o in others)


def write_stability(results: Sequence[Stability], root: str | Path | None = None) -> list[Path]:
    """stability[_vs_OTHER].{json,png} under the first spec's analysis/ (the comparison figure
    belongs with the spec being compared); each other spec gets its own stability.json too."""
    first = artifacts.spec_artifacts(results[0].spec, root).analysis_dir
    stem = stability_file_stem(results)
    payload = {"compared": [r.spec for r in results], "results": [r.stats() for r in results]}
    files = [plot_stability(results, first / f"{stem}.png")]
    artifacts.write_json(first / f"{stem}.json", payload)
    files.append(first / f"{stem}.json")
    if len(results) > 1:
        for res in results:
            own = artifacts.spec_artifacts(res.spec, root).analysis_dir / "stability.json"
            artifacts.write_json(own, {"compared": [res.spec], "results": [res.stats()]})
            files.append(own)
    return files
