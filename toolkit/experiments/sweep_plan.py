"""What a sweep runs and how far it got: the (spec, seed) runs, their states as the sweep goes,
and the rules every backend shares (a run's manifest, marking runs finished or reused)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.core import artifacts
from toolkit.core.errors import ArtifactError, Interrupted, ToolkitError, UsageError
from toolkit.specs import Spec, match_specs, study_specs, with_overrides

BACKENDS = ("local", "ray")


@dataclass
class RunStatus:
    """One (spec, seed) run of a sweep; mutated as the sweep goes."""

    spec: Spec  # with the sweep's epochs applied
    seed: int
    limit_train: int | None
    state: str = "queued"  # queued | running | trained | reused | failed | missing (--table)
    epoch: int = 0
    logs: dict[str, float] = field(default_factory=dict)
    started: float | None = None
    finished: float | None = None
    metrics: dict[str, Any] | None = None
    run_dir: Path | None = None
    error: str | None = None
    node: str | None = None

    @property
    def key(self) -> str:
        rid = artifacts.run_id(self.seed, self.spec.epochs, self.limit_train, self.spec.mixed_precision)
        return f"{self.spec.name}/{rid}"

    @property
    def done(self) -> bool:
        return self.state in ("trained", "reused", "failed")

    def cost(self) -> float:
        """Relative cost of one epoch, only for the ETA: FLOPs, plus a floor for per-batch
        overhead, with on-the-fly augmentation counted as roughly tripling it on CPU."""
        weight = self.spec.mflops_per_image() + 1.0
        return weight * (3.0 if self.spec.recipe.augments else 1.0)


@dataclass
class SweepState:
    runs: list[RunStatus]
    epochs: int | None
    seeds: int
    limit_train: int | None
    backend: str = "local"
    started: float = field(default_factory=time.time)
    finished: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _training_started: float | None = None

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("queued", "running", "trained", "reused", "failed", "missing"), 0)
        for run in self.runs:
            out[run.state] += 1
        return out

    def eta_seconds(self) -> float | None:
        """Remaining seconds, from the epochs trained so far in this sweep (reuse is free)."""
        if self._training_started is None:
            return None
        done_units = sum(r.epoch * r.cost() for r in self.runs if r.state in ("running", "trained"))
        elapsed = time.time() - self._training_started
        if done_units <= 0 or elapsed <= 0:
            return None
        left_units = sum((r.spec.epochs - r.epoch) * r.cost() for r in self.runs
                         if r.state in ("queued", "running"))
        concurrency = max(1, sum(r.state == "running" for r in self.runs))
        return left_units / (done_units / elapsed) / (concurrency if self.backend == "ray" else 1)

    def mark_running(self, run: RunStatus) -> None:
        with self.lock:
            run.state, run.started = "running", time.time()
            if self._training_started is None:
                self._training_started = run.started


def plan_sweep(patterns: Sequence[str] | None, *, seeds: int = 1, epochs: int | None = None,
               limit_train: int | None = None, backend: str = "local",
               mixed_precision: str | None = None) -> SweepState:
    """The runs of a sweep: every spec matching `patterns` (default the study's 17) x seeds 0..N-1, each
    in `mixed_precision` (default: each spec's recipe), resolved here for this machine."""
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {epochs}")
    if limit_train is not None and limit_train < 10:
        raise UsageError(f"--limit-train must be at least 10, got {limit_train}")
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from toolkit.training import precision
    from toolkit.training.inputs import check_limit_train

    # Without patterns a sweep reproduces the study's tables: its 17 specs.
    chosen = match_specs(patterns) if patterns else study_specs()
    specs = [with_overrides(s, epochs=epochs,
                            mixed_precision=precision.resolve(mixed_precision or s.mixed_precision))
             for s in chosen]
    for spec in specs:
        check_limit_train(limit_train, fraction=spec.validation_fraction)
    runs = [RunStatus(spec, seed, limit_train) for spec in specs for seed in range(seeds)]
    return SweepState(runs, epochs, seeds, limit_train, backend)


def run_manifest(run: RunStatus, checksums: dict[str, str], root: Path) -> dict[str, Any] | None:
    """The manifest `train` gives this run (None: a student whose teacher is not trained here)."""
    from toolkit.specs import run_variant
    from toolkit.training import distill

    try:
        teacher = distill.teacher_record(run.spec, root)
    except ArtifactError:
        return None
    return artifacts.make_manifest(run.spec, seed=run.seed, epochs=run.spec.epochs,
                                   limit_train=run.limit_train, data_checksums=checksums,
                                   mixed_precision=run.spec.mixed_precision, variant=run_variant(run.spec),
                                   teacher=teacher)


def describe_error(exc: BaseException) -> str:
    message = exc.message if isinstance(exc, ToolkitError) else str(exc)
    first = (message.strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


Monitor = Callable[[SweepState], None]


def finish_run(state: SweepState, run: RunStatus, *, metrics=None, run_dir=None, reused=False,
            error: str | None = None) -> None:
    with state.lock:
        run.finished = time.time()
        if error is not None:
            run.state, run.error = "failed", error
            return
        run.state = "reused" if reused else "trained"
        run.metrics, run.run_dir = metrics, run_dir
        run.epoch = run.spec.epochs


def interrupted(state: SweepState) -> Interrupted:
    counts = state.counts()
    return Interrupted(
        f"sweep interrupted with {counts['trained'] + counts['reused']}/{len(state.runs)} runs "
        "complete; completed runs are kept and the interrupted ones keep their last finished "
        "epoch. Resume by running the same toolkit sweep command again"
    )


def finish_completed(state: SweepState, root: Path, checksums: dict[str, str]) -> list[RunStatus]:
    """Mark every run with a completed, matching run on disk as reused; return the others."""
    remaining: list[RunStatus] = []
    for run in state.runs:
        arts = artifacts.spec_artifacts(run.spec.name, root)
        manifest = run_manifest(run, checksums, root)
        existing = artifacts.completed_run(arts, manifest) if manifest is not None else None
        if existing is not None:
            metrics = artifacts.read_json(existing / "metrics.json", what="metrics")
            finish_run(state, run, metrics=metrics, run_dir=existing, reused=True)
        else:
            remaining.append(run)
    return remaining
