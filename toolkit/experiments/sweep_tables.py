"""A sweep's tables: one row per spec (mean ± std and range over seeds, the seed study's reported
figures, the difference, ranks), written as ROOT/sweep.md, sweep.csv, sweep.png and sweep.json
(the last sweep's run statuses, so that `toolkit sweep --table` can still show why a run is
missing)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.core import artifacts
from toolkit.core.errors import PartialFailure
from toolkit.core.stats import Interval, Spread, interval_of_accuracy, seed_spread
from toolkit.experiments.sweep_plan import RunStatus, SweepState
from toolkit.families import FAMILIES
from toolkit.specs import Spec
from toolkit.training.summary import ACCURACY_IMAGES

# The figures the seed reports for every spec (its Tables 3 and 4); test loss it does not report.
FIGURES = ("test_accuracy", "test_loss", "train_accuracy", "train_loss", "val_accuracy",
           "val_loss", "train_seconds")


@dataclass(frozen=True)
class SpecRow:
    spec: Spec
    runs: list[RunStatus]
    stats: dict[str, Spread | None]
    rank: int | None
    seed_rank: int | None

    @property
    def done(self) -> int:
        return sum(r.metrics is not None for r in self.runs)

    @property
    def errors(self) -> list[str]:
        return [f"seed {r.seed}: {r.error}" for r in self.runs if r.error]

    def reported(self, figure: str) -> float | None:
        return getattr(self.spec.reported, figure, None) if self.spec.reported else None

    def diff(self, figure: str) -> float | None:
        stat, theirs = self.stats.get(figure), self.reported(figure)
        return None if stat is None or theirs is None else stat.mean - theirs

    def interval(self, figure: str) -> Interval | None:
        """The 95% Wilson interval of one run's accuracy at the mean over seeds (the images an
        accuracy counts come from the runs' metrics)."""
        stat = self.stats.get(figure)
        counts = [r.metrics.get(ACCURACY_IMAGES[figure]) for r in self.runs if r.metrics]
        if stat is None or not counts or not counts[0]:
            return None
        return interval_of_accuracy(stat.mean, int(counts[0]))


def summarize(state: SweepState) -> list[SpecRow]:
    """One row per spec, ordered by this toolkit's mean test accuracy (specs without results last)."""
    by_spec: dict[str, list[RunStatus]] = {}
    for run in state.runs:
        by_spec.setdefault(run.spec.name, []).append(run)
    rows = []
    for runs in by_spec.values():
        stats = {fig: seed_spread([float(r.metrics[fig]) for r in runs
                             if r.metrics is not None and r.metrics.get(fig) is not None])
                 for fig in FIGURES}
        rows.append(SpecRow(runs[0].spec, runs, stats, None, None))
    scored = [r for r in rows if r.stats["test_accuracy"] is not None]
    ours = sorted(scored, key=lambda r: -r.stats["test_accuracy"].mean)
    theirs = sorted((r for r in scored if r.reported("test_accuracy") is not None),
                    key=lambda r: -r.reported("test_accuracy"))
    rank = {r.spec.name: i + 1 for i, r in enumerate(ours)}
    seed_rank = {r.spec.name: i + 1 for i, r in enumerate(theirs)}
    ordered = ours + [r for r in rows if r not in scored]
    return [SpecRow(r.spec, r.runs, r.stats, rank.get(r.spec.name), seed_rank.get(r.spec.name))
            for r in ordered]


# ---------------------------------------------------------------- formatting and writing


def fmtseed_spread(stat: Spread | None, *, digits: int = 4, show_range: bool = True) -> str:
    if stat is None:
        return "-"
    text = f"{stat.mean:.{digits}f}"
    if stat.std is not None:
        text += f" ± {stat.std:.{digits}f}"
        if show_range:
            text += f" [{stat.low:.{digits}f}–{stat.high:.{digits}f}]"
    return text


def _num(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _status(row: SpecRow, seeds: int) -> str:
    failed = sum(r.state == "failed" for r in row.runs)
    text = f"{row.done}/{seeds}"
    return text + (f" ({failed} failed)" if failed else "")


ACC_COLUMNS = ["rank", "seed rank", "spec", "runs", "test acc", "95% CI", "seed", "Δ", "train acc",
               "95% CI", "seed", "Δ", "val acc", "95% CI", "seed", "Δ"]
LOSS_COLUMNS = ["spec", "test loss", "train loss", "seed", "Δ", "val loss", "seed", "Δ",
                "train s", "seed s"]


def accuracy_rows(rows: list[SpecRow], seeds: int) -> list[list[str]]:
    out = []
    for row in rows:
        line = [str(row.rank or "-"), str(row.seed_rank or "-"), row.spec.name,
                _status(row, seeds)]
        for fig in ("test_accuracy", "train_accuracy", "val_accuracy"):
            ci = row.interval(fig)
            line += [fmtseed_spread(row.stats[fig], show_range=fig == "test_accuracy"),
                     f"{ci.low:.4f}–{ci.high:.4f}" if ci else "-",
                     _num(row.reported(fig)), _num(row.diff(fig), signed=True)]
        out.append(line)
    return out


def loss_rows(rows: list[SpecRow]) -> list[list[str]]:
    out = []
    for row in rows:
        line = [row.spec.name, fmtseed_spread(row.stats["test_loss"], show_range=False)]
        for fig in ("train_loss", "val_loss"):
            line += [fmtseed_spread(row.stats[fig], show_range=False), _num(row.reported(fig)),
                     _num(row.diff(fig), signed=True)]
        line += [fmtseed_spread(row.stats["train_seconds"], digits=1, show_range=False),
                 _num(row.reported("train_seconds"), 2)]
        out.append(line)
    return out


def _md_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def describe_settings(state: SweepState) -> str:
    epochs = state.epochs if state.epochs is not None else "each spec's own (20)"
    n_specs = len({r.spec.name for r in state.runs})
    seeds = f"{state.seeds} seeds (0..{state.seeds - 1})" if state.seeds > 1 else "1 seed (0)"
    text = f"{n_specs} spec{'s' if n_specs != 1 else ''} × {seeds}, epochs: {epochs}"
    modes = sorted({r.spec.mixed_precision for r in state.runs})
    if modes != ["off"]:
        text += f", mixed precision: {', '.join(modes)}"
    if state.limit_train:
        text += f", training subset: {state.limit_train} images"
    return text


def epochs_caveat(state: SweepState) -> str:
    """A warning when the runs are not comparable with the seed's 20-epoch figures."""
    notes = []
    if state.epochs is not None and state.epochs != Spec.epochs:
        notes.append(f"these runs trained {state.epochs} epochs; the seed's figures are after "
                     f"{Spec.epochs} epochs (its section 5.1), train seconds included")
    if state.limit_train:
        notes.append(f"these runs trained on a {state.limit_train}-image subset")
    return ("Not like for like: " + "; ".join(notes) + ".") if notes else ""


def render_markdown(state: SweepState, rows: list[SpecRow]) -> str:
    if state.finished:
        origin = (f"Backend: {state.backend}. Wall time of the sweep that wrote this: "
                  f"{state.finished - state.started:.0f} s.")
    else:
        origin = "Tabulated from the completed runs under this root (`toolkit sweep --table`)."
    failures = [f"- {row.spec.name} {err}" for row in rows for err in row.errors]
    caveat = epochs_caveat(state)
    parts = [
        "# Sweep results\n",
        f"Settings: {describe_settings(state)}. {origin}\n",
        *([f"**{caveat}**\n"] if caveat else []),
        "Our figures are the mean over seeds; with more than one seed, ± is the sample standard "
        "deviation and [a–b] the range: that spread is what separates two trainings. \"95% CI\" "
        "is the Wilson interval of one run's accuracy at that value on the images it counts "
        "(test: the 10,000 test images; train and val: the training images and the validation "
        "holdout), so two specs whose intervals overlap may not differ. \"seed\" is the study's "
        "reported figure (its Tables 3 and 4) and Δ = ours − seed. Ranks order specs by mean test "
        "accuracy (ours) and by the study's test accuracy (seed rank) among the specs shown.\n",
        "## Accuracy\n",
        _md_table(ACC_COLUMNS, accuracy_rows(rows, state.seeds)),
        "\n## Loss and training time\n",
        "The seed's losses (~1.6 at 85–91% accuracy) come from softmax outputs fed to a loss "
        "expecting logits; this toolkit's losses are ordinary cross-entropy, so Δ loss measures "
        "that bug, not the models. Training seconds depend on the hardware (the seed's: a "
        "GPU; ours: whatever ran the sweep).\n",
        _md_table(LOSS_COLUMNS, loss_rows(rows)),
    ]
    if failures:
        parts += ["\n## Failed runs\n", "\n".join(failures)]
    return "\n".join(parts) + "\n"


def render_csv(state: SweepState, rows: list[SpecRow]) -> str:
    header = ["rank", "seed_rank", "spec", "family", "epochs", "seeds", "runs_done", "runs_failed"]
    for fig in FIGURES:
        header += [f"{fig}_mean", f"{fig}_std", f"{fig}_min", f"{fig}_max", f"{fig}_seed",
                   f"{fig}_diff"]
        if fig in ACCURACY_IMAGES:
            header += [f"{fig}_ci95_low", f"{fig}_ci95_high"]
    header.append("errors")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        line: list[Any] = [row.rank or "", row.seed_rank or "", row.spec.name, row.spec.family,
                           row.spec.epochs, state.seeds, row.done,
                           sum(r.state == "failed" for r in row.runs)]
        for fig in FIGURES:
            stat = row.stats[fig]
            line += ["" if stat is None else repr(stat.mean),
                     "" if stat is None or stat.std is None else repr(stat.std),
                     "" if stat is None else repr(stat.low), "" if stat is None else repr(stat.high),
                     "" if row.reported(fig) is None else repr(row.reported(fig)),
                     "" if row.diff(fig) is None else repr(row.diff(fig))]
            if fig in ACCURACY_IMAGES:
                ci = row.interval(fig)
                line += ["", ""] if ci is None else [repr(ci.low), repr(ci.high)]
        line.append("; ".join(row.errors))
        writer.writerow(line)
    return buf.getvalue()


# Bar colours by the family's place in the registry (the seed's DNN green and CNN blue first).
PALETTE = ("#55A868", "#4C72B0", "#DD8452", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD")


def family_color(family: str) -> str:
    names = list(FAMILIES)
    return PALETTE[names.index(family) % len(PALETTE)] if family in names else PALETTE[-1]


def render_chart(state: SweepState, rows: list[SpecRow], target: Path) -> None:
    """Horizontal bars of our mean test accuracy (std error bars, each seed a dot), the seed's
    reported value a red diamond, best spec on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if r.stats["test_accuracy"] is not None]
    if not scored:
        return
    scored = scored[::-1]  # barh draws bottom-up; the best spec goes on top
    ys = list(range(len(scored)))
    means = [r.stats["test_accuracy"].mean for r in scored]
    errs = [r.stats["test_accuracy"].std or 0.0 for r in scored]
    colors = [family_color(r.spec.family) for r in scored]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(scored) + 2.0), layout="constrained")
    ax.barh(ys, means, xerr=errs if any(errs) else None, color=colors, alpha=0.85, capsize=3,
            height=0.65, error_kw={"elinewidth": 1.2})
    cis = _draw_intervals(ax, scored, means, ys)
    labelled = False
    for y, row in zip(ys, scored, strict=True):
        values = [float(r.metrics["test_accuracy"]) for r in row.runs if r.metrics]
        if len(values) > 1:
            ax.scatter(values, [y] * len(values), s=10, color="black", zorder=3,
                       label="_nolegend_" if labelled else "one seed's run")
            labelled = True
    seed_points = [(r.reported("test_accuracy"), y) for y, r in zip(ys, scored, strict=True)
                   if r.reported("test_accuracy") is not None]
    if seed_points:
        ax.scatter([p[0] for p in seed_points], [p[1] for p in seed_points], marker="D", s=36,
                   color="#C44E52", zorder=4, label="seed's reported test accuracy")
    lows = [m - e for m, e in zip(means, errs, strict=True)] + [p[0] for p in seed_points]
    lows += [c.low for c in cis]
    left = max(0.0, math.floor((min(lows) - 0.02) * 50) / 50)
    highs = [m + e for m, e in zip(means, errs, strict=True)] + [p[0] for p in seed_points]
    highs += [c.high for c in cis]
    ax.set_xlim(left, min(1.0, max(highs) + 0.02))
    ax.set_yticks(ys, [r.spec.name for r in scored], fontsize=8)
    ax.set_xlabel("test accuracy (10,000 Fashion-MNIST test images)")
    seeds_note = (f"bars: mean ± std over {state.seeds} seeds" if state.seeds > 1
                  else "bars: one seed per spec")
    ax.set_title(f"Test accuracy per spec: this toolkit vs the seed's reported figures\n"
                 f"{describe_settings(state)}; {seeds_note}", fontsize=9)
    from matplotlib.patches import Patch

    handles, _ = ax.get_legend_handles_labels()
    families = {r.spec.family for r in scored}
    handles += [Patch(color=family_color(family), label=f"{family} (this toolkit)")
                for family in FAMILIES if family in families]
    # Below the axes, so it never hides a bar or a seed marker.
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    with artifacts.atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _draw_intervals(ax, scored: list[SpecRow], means: list[float], ys: list[int]) -> list[Interval]:
    """Thin whiskers just above each bar: the 95% Wilson interval of one run at the mean."""
    cis = [r.interval("test_accuracy") for r in scored]
    if not all(cis):
        return []
    ax.errorbar(means, [y + 0.22 for y in ys], fmt="none", ecolor="0.35", elinewidth=0.8, capsize=2,
                xerr=[[m - c.low for m, c in zip(means, cis, strict=True)],
                      [c.high - m for m, c in zip(means, cis, strict=True)]],
                label="95% CI of one run (Wilson, 10,000 test images)")
    return cis


@dataclass(frozen=True)
class SweepOutputs:
    markdown: Path
    csv: Path
    chart: Path
    record: Path


def output_paths(root: Path | None = None) -> SweepOutputs:
    base = artifacts.resolve_root(root)
    return SweepOutputs(base / "sweep.md", base / "sweep.csv", base / "sweep.png",
                        base / "sweep.json")


def write_outputs(state: SweepState, rows: list[SpecRow], root: Path | None = None, *,
                  record: bool = True) -> SweepOutputs:
    """Write sweep.md, sweep.csv, sweep.png (and sweep.json after a sweep), each atomically."""
    paths = output_paths(root)
    artifacts.write_text(paths.markdown, render_markdown(state, rows))
    artifacts.write_text(paths.csv, render_csv(state, rows))
    render_chart(state, rows, paths.chart)
    if record:
        artifacts.write_json(paths.record, {
            "settings": {"epochs": state.epochs, "seeds": state.seeds,
                         "limit_train": state.limit_train, "backend": state.backend},
            "started": state.started, "finished": state.finished,
            "wall_seconds": None if state.finished is None else state.finished - state.started,
            "runs": [{"key": r.key, "spec": r.spec.name, "seed": r.seed, "state": r.state,
                      "error": r.error, "node": r.node,
                      "run_dir": str(r.run_dir) if r.run_dir else None,
                      "seconds": None if r.started is None or r.finished is None
                      else round(r.finished - r.started, 2)}
                     for r in state.runs],
        })
    return paths


def raise_if_failed(state: SweepState, outputs: SweepOutputs | None = None) -> None:
    failed = [r for r in state.runs if r.state == "failed"]
    if failed:
        where = f" (errors in {outputs.markdown})" if outputs else ""
        first = failed[0]
        raise PartialFailure(
            f"{len(failed)} of {len(state.runs)} runs failed{where}, e.g. {first.key}: "
            f"{first.error}. The others completed; rerun the same command to retry the failed "
            "ones (completed runs are reused)"
        )
