"""The report's plots: accuracy against batch-1 p50 latency, file size and batch-1 peak memory.

Every point carries its error bars (the accuracy's 95% Wilson interval; the latency's and the
memory's 95% interval across processes, where measured). Rows tied with the best row (not
significantly less accurate) are filled and sit on a shaded band spanning their intervals;
rows significantly less accurate are hollow. Front rows have a black edge; the pick a red star.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from toolkit.core import artifacts
from toolkit.report.rows import Report, Row, cost_interval, cost_of

SHORT_RUNTIME = {
    "keras": "keras",
    "keras-predict": "predict",
    "onnxruntime": "ORT",
    "onnxruntime-cuda": "ORT-CUDA",
    "litert": "LiteRT",
}
PLOTS = {  # cost -> (file name, x label)
    "latency": ("report_accuracy_vs_latency.png", "batch-1 p50 latency (ms, log scale)"),
    "size": ("report_accuracy_vs_size.png", "file size (MB, log scale)"),
    "memory": ("report_accuracy_vs_memory.png", "peak resident memory serving batch 1 (MB, log scale)"),
}
MARKERS = {"keras": "s", "onnx": "o", "tflite": "^"}


def _label(r: Row, several_specs: bool) -> str:
    label = f"#{r.number} {r.key} {SHORT_RUNTIME.get(r.runtime, r.runtime)}"
    if r.device != "cpu":
        label += f" {r.device}"
    return f"{label} ({r.spec})" if several_specs else label


def _errors(points: list[Row], cost: str) -> tuple[list[list[float]], list[list[float]]]:
    """(x errors, y errors) as matplotlib's [[below...], [above...]]; 0 where there is none."""
    xerr: list[list[float]] = [[], []]
    yerr: list[list[float]] = [[], []]
    for r in points:
        x, xi = cost_of(r, cost), cost_interval(r, cost)
        xerr[0].append(x - xi.low if xi else 0.0)
        xerr[1].append(xi.high - x if xi else 0.0)
        yi = r.accuracy_interval
        yerr[0].append((r.accuracy - yi.low) * 100 if yi else 0.0)
        yerr[1].append((yi.high - r.accuracy) * 100 if yi else 0.0)
    return xerr, yerr


def _tied_band(ax, points: list[Row]) -> None:
    tied = [r for r in points if r.tied and r.accuracy_interval is not None]
    if len(tied) < 2:
        return
    low = min(r.accuracy_interval.low for r in tied) * 100
    high = max(r.accuracy_interval.high for r in tied) * 100
    ax.axhspan(low, high, color="tab:green", alpha=0.08, zorder=0,
               label=f"{len(tied)} rows tied with the best (not significantly less accurate)")


def plot(rep: Report, cost: str, target: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((r for r in rep.rows if r.accuracy is not None and cost_of(r, cost) is not None),
                    key=lambda r: cost_of(r, cost))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(11.5, 6.5), dpi=110)
    runtimes_seen = sorted({r.runtime for r in points})
    colors = {rt: plt.cm.tab10(i % 10) for i, rt in enumerate(runtimes_seen)}
    xerr, yerr = _errors(points, cost)
    several = len({p.spec for p in points}) > 1
    for i, r in enumerate(points):
        x, y = cost_of(r, cost), r.accuracy * 100
        ax.errorbar(x, y, xerr=[[xerr[0][i]], [xerr[1][i]]], yerr=[[yerr[0][i]], [yerr[1][i]]], fmt="none",
                    ecolor=colors[r.runtime], elinewidth=0.8, alpha=0.6, capsize=2, zorder=2)
        filled = r.tied or r.verdict is None
        ax.scatter(x, y, marker=MARKERS.get(r.format, "o"), s=70, zorder=3,
                   facecolors=colors[r.runtime] if filled else "none", edgecolors=
                   "black" if r.fronts.get(cost) else colors[r.runtime], linewidths=1.4)
        dx, dy = ((6, 6), (6, -12), (-6, 16), (-6, -22))[i % 4]  # neighbours do not print over each other
        ax.annotate(_label(r, several), (x, y), textcoords="offset points", xytext=(dx, dy),
                    ha="left" if dx > 0 else "right", fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5})
    _tied_band(ax, points)
    _front_line(ax, points, cost)
    _pick(ax, rep, points, lambda r: cost_of(r, cost))
    for rt in runtimes_seen:
        ax.scatter([], [], color=colors[rt], label=rt)
    for fmt, m in MARKERS.items():
        if any(r.format == fmt for r in points):
            ax.scatter([], [], marker=m, color="white", edgecolors="black", label=f"{fmt} file")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="gray", label="significantly less accurate")
    ax.set_xscale("log")
    ax.set_xlabel(PLOTS[cost][1])
    ax.set_ylabel("test accuracy (%), 95% Wilson interval")
    ax.set_title(f"Accuracy vs {cost} (error bars: 95% intervals; black edge: front; filled: tied with the "
                 "best; colour: runtime; shape: file format)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    with artifacts.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target


def _front_line(ax, points: list[Row], cost: str) -> None:
    front = [r for r in points if r.fronts.get(cost)]
    if front:
        ax.step([cost_of(r, cost) for r in front], [r.accuracy * 100 for r in front], where="post",
                color="gray", linestyle="--", linewidth=1, label="front (≈ members tied)", zorder=1)


def _pick(ax, rep: Report, points: list[Row], x: Callable[[Row], float]) -> None:
    if rep.pick is not None and rep.pick in points:
        ax.scatter(x(rep.pick), rep.pick.accuracy * 100, marker="*", s=320, facecolors="none",
                   edgecolors="red", linewidths=1.5, label="recommended pick", zorder=4)


def write_plots(rep: Report, folder: Path | None = None) -> list[Path]:
    """The plots, into `folder` (default: the report's root)."""
    folder = rep.root if folder is None else folder
    return [p for cost, (name, _) in PLOTS.items() if (p := plot(rep, cost, folder / name))]
