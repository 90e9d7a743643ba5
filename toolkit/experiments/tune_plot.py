"""The plot of a `toolkit tune` search: validation accuracy (with its Wilson 95% interval over
the validation images) against the cost, for every feasible candidate of the fidelity the front
was judged at, the front drawn as a step line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.experiments.analysis_plots import pyplot, save_figure


def plot_front(result: dict[str, Any], target: Path) -> Path | None:
    """Write the plot to `target` (None: nothing was trained to plot)."""
    points = result.get("points") or []
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = ((False, dict(color="0.6", fmt="o", ms=4)), (True, dict(color="C3", fmt="o", ms=6)))
    for on_front, style in styles:
        chosen = [p for p in points if p["front"] == on_front]
        if not chosen:
            continue
        acc = [p["val_accuracy"] for p in chosen]
        low = [p["val_accuracy"] - p["interval"][0] if p["interval"] else 0.0 for p in chosen]
        high = [p["interval"][1] - p["val_accuracy"] if p["interval"] else 0.0 for p in chosen]
        ax.errorbar([p["cost"] for p in chosen], acc, yerr=[low, high], capsize=2, linestyle="none",
                    label="front" if on_front else "feasible", **style)
    front = sorted((p for p in points if p["front"]), key=lambda p: p["cost"])
    ax.step([p["cost"] for p in front], [p["val_accuracy"] for p in front], where="post", color="C3", lw=1)
    ax.set_xlabel(result["cost_label"])
    ax.set_ylabel(f"validation accuracy at {result['front_fidelity']} epochs (Wilson 95%)")
    ax.set_title(f"toolkit tune {result['study']}: {result['budget']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, target)
