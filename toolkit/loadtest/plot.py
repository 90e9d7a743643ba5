"""The server scenario's curve: p99 latency against the offered rate, one line per endpoint and
batching setting, the bound drawn across, invalid steps (client send lag) hollow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from toolkit.core import artifacts
from toolkit.core.loadtest_record import LoadtestResult

FAILED_P99 = 1e4  # ms: where a step with failures (p99 undefined) is drawn, at the top


def plot_curves(results: Sequence[LoadtestResult], target: Path) -> Path | None:
    """A PNG of rate vs p99 for every server-scenario result; None without matplotlib or curves."""
    curves = [r for r in results if r.scenario == "server" and r.steps]
    if not curves:
        return None
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for result in curves:
        steps = sorted(result.steps, key=lambda s: s.target_rate)
        rates = [s.target_rate for s in steps]
        p99 = [s.p99_ms if s.p99_ms is not None else FAILED_P99 for s in steps]
        batching = result.server.get("batching", {}).get("max_batch")
        label = f"/v1/{result.endpoint}, max batch {batching}" + (
            f" ({result.label})" if result.label else ""
        )
        (line,) = ax.plot(rates, p99, marker="o", label=label)
        hollow = [(r, p) for r, p, s in zip(rates, p99, steps, strict=True) if not s.valid]
        if hollow:
            ax.scatter(
                *zip(*hollow, strict=True), s=90, facecolors="white", edgecolors=line.get_color(), zorder=3
            )
    for bound in sorted({r.p99_bound_ms for r in curves if r.p99_bound_ms}):
        ax.axhline(bound, color="gray", linestyle="--", linewidth=1)
        ax.annotate(
            f"p99 bound {bound:g} ms",
            (ax.get_xlim()[0], bound),
            fontsize=8,
            color="gray",
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (requests/s, Poisson arrivals)")
    ax.set_ylabel("p99 latency from scheduled arrival (ms; top = requests failed)")
    shared = curves[0].machine.get("shared", "")
    ax.set_title(
        "Server scenario: p99 latency vs rate (hollow: client send lag > 1 ms, invalid)\n" + shared,
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with artifacts.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target
