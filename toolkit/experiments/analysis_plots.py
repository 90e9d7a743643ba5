"""The analyses' figures: training curves, the confusion matrix, t-SNE maps, feature maps, an
activation scatter, and the stability plot. Each is written atomically as PNG."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import CLASS_NAMES
from toolkit.core import artifacts

MAX_MAPS_PER_LAYER = 64


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, target: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    artifacts.write_bytes(target, buffer.getvalue())
    return target


def _class_colors():
    return pyplot().get_cmap("tab10").colors


def plot_curves(history: dict[str, list[float]], title: str, target: Path) -> Path:
    plt = pyplot()
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
    return save_figure(fig, target)


def plot_confusion(cm: np.ndarray, title: str, target: Path) -> Path:
    plt = pyplot()
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
    return save_figure(fig, target)


def plot_tsne(maps: Sequence[tuple[str, np.ndarray, float]], labels: np.ndarray, title: str,
              target: Path) -> Path:
    plt = pyplot()
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
    return save_figure(fig, target)


def plot_feature_maps(image: np.ndarray, layers: Sequence[tuple[str, np.ndarray]], title: str,
                      target: Path) -> Path:
    """The input, then each layer's channels as a grid (up to 64 per layer)."""
    plt = pyplot()
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
    return save_figure(fig, target)


def plot_activation_scatter(acts: np.ndarray, units: tuple[int, int], labels: np.ndarray,
                            sample: tuple[str, np.ndarray] | None, layer: str, title: str,
                            target: Path) -> Path:
    plt = pyplot()
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
    return save_figure(fig, target)


def plot_stability(results: Sequence[Any], target: Path) -> Path:
    """Validation accuracy per epoch over seeds, and test accuracy over seeds, per spec
    (`results`: toolkit.experiments.stability.Stability)."""
    plt = pyplot()
    fig, (ax, box) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2.2, 1]})
    colors = pyplot().get_cmap("tab10").colors
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
    return save_figure(fig, target)
