"""Stability over seeds: train (or reuse) seeds 0..N-1 of each spec through the sweep's local
loop (toolkit.experiments.sweep, so runs are reused, resumed and never promoted by the one rule
every multi-seed loop follows), and summarise test accuracy (toolkit.core.stats.seed_spread) and
the per-epoch validation curve over seeds -> ROOT/NAME/analysis/stability*.{json,png}."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import artifacts, stats
from toolkit.core.errors import PartialFailure, UsageError
from toolkit.experiments.analysis_plots import plot_stability
from toolkit.experiments.sweep import run_sweep
from toolkit.experiments.sweep_plan import RunStatus, SweepState, plan_sweep
from toolkit.specs import get_spec


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
        test = [r.test_accuracy for r in self.runs]
        spread = stats.seed_spread(test)
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
                "values": test, "mean": spread.mean, "std": spread.std or 0.0, "min": spread.low,
                "max": spread.high, "range": spread.high - spread.low,
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


RunHook = Callable[[str, int, str], None]  # (spec, seed, event): "start", then "done" or "reused"
EpochHook = Callable[[int, int, dict[str, float]], None]


class _RunEvents:
    """A sweep monitor that turns the sweep's state changes into per-run and per-epoch events."""

    def __init__(self, on_run: RunHook | None, on_epoch: EpochHook | None) -> None:
        self.on_run, self.on_epoch = on_run, on_epoch
        self.seen: dict[str, tuple[str, int]] = {}

    def __call__(self, state: SweepState) -> None:
        for run in list(state.runs):
            before = self.seen.get(run.key, ("queued", 0))
            now = (run.state, run.epoch)
            self.seen[run.key] = now
            if now == before:
                continue
            if run.state == "running" and before[0] != "running" and self.on_run:
                self.on_run(run.spec.name, run.seed, "start")
            if run.state == "running" and run.epoch > before[1] and self.on_epoch:
                self.on_epoch(run.epoch, run.spec.epochs, run.logs)
            if run.state in ("trained", "reused") and self.on_run:
                self.on_run(run.spec.name, run.seed, "reused" if run.state == "reused" else "done")


def stability(
    exps: Sequence[str],
    seeds: int,
    *,
    epochs: int | None = None,
    limit_train: int | None = None,
    root: Path | None = None,
    data_dir: Path | None = None,
    on_run: RunHook | None = None,
    on_epoch: EpochHook | None = None,
) -> list[Stability]:
    """Train (or reuse) seeds 0..seeds-1 of each spec, never promoting them, and collect curves."""
    if seeds < 2:
        raise UsageError(f"--seeds must be at least 2 to measure stability, got {seeds}")
    specs = [get_spec(e) for e in exps]
    if len({s.name for s in specs}) != len(specs):
        raise UsageError("give each --exp once; stability compares different specs")
    state = plan_sweep([s.name for s in specs], seeds=seeds, epochs=epochs, limit_train=limit_train)
    run_sweep(state, root=root, data_dir=data_dir, monitor=_RunEvents(on_run, on_epoch))
    failed = [r for r in state.runs if r.state == "failed"]
    if failed:
        raise PartialFailure(f"{len(failed)} of {len(state.runs)} stability runs failed, e.g. "
                             f"{failed[0].key}: {failed[0].error}; the others are kept and reused when you "
                             "rerun the command")
    return [Stability(spec.name, epochs or spec.epochs, limit_train,
                      [_seed_run(r) for r in state.runs if r.spec.name == spec.name]) for spec in specs]


def _seed_run(run: RunStatus) -> SeedRun:
    history = artifacts.read_json(run.run_dir / "history.json", what="training history")
    return SeedRun(run.seed, run.run_dir.name, float(run.metrics["test_accuracy"]),
                   [float(v) for v in history["val_accuracy"]], [float(v) for v in history["val_loss"]],
                   run.state == "reused")


def stability_file_stem(results: Sequence[Stability]) -> str:
    others = [r.spec for r in results[1:]]
    return "stability" + "".join(f"_vs_{re.sub(r'[^A-Za-z0-9_]', '', o)}" for o in others)


def write_stability(results: Sequence[Stability], root: Path | None = None) -> list[Path]:
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
