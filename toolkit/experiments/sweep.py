"""Sweeps: train many (spec, seed) runs, locally or on a Ray cluster, and tabulate them.

Every run goes through `toolkit.training.train.train(..., promote=False)`, so a sweep shares the run
layout (ROOT/NAME/runs/<run-id>/) and the one reuse rule (`artifacts.completed_run`) with
`toolkit train` and the stability analyses: a completed run is never trained twice, an
interrupted run continues from its last finished epoch, and a spec's current run is never
replaced.

Backends:
- local: one run at a time in this process (TensorFlow already spreads one training over
  every core, so running two side by side on one machine only adds contention).
- ray: each run is a Ray task declaring `cpus_per_run` CPUs. Where the task's node sees the
  caller's artifacts root (a token file the caller wrote there is visible), it trains straight
  into that root, with the same locks and resume state as a local run. Elsewhere (a node of a
  multi-node cluster without a shared filesystem) it trains into a temporary root on its own
  node and returns the run's three files as bytes; the caller installs them into its root
  atomically, under the run's lock, and checks the manifest before counting the run.

The plan and run states live in toolkit.experiments.sweep_plan, the Ray backend in
toolkit.experiments.sweep_ray, and the tables (one row per spec: mean +- std and range over
seeds beside the seed's figures, written as ROOT/sweep.{md,csv,png,json}) in
toolkit.experiments.sweep_tables.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from toolkit.core import artifacts, data
from toolkit.core.errors import ArtifactError, Interrupted, UsageError
from toolkit.experiments.sweep_plan import (
    Monitor,
    SweepState,
    describe_error,
    finish_completed,
    finish_run,
    interrupted,
)
from toolkit.experiments.sweep_ray import run_ray


def run_sweep(state: SweepState, *, root: Path | None = None,
              data_dir: Path | None = None, address: str | None = None,
              max_concurrent: int | None = None, cpus_per_run: int = 1,
              transfer: str = "auto", monitor: Monitor | None = None) -> SweepState:
    """Train (or reuse) every run of `state`; a failing run is recorded and the others go on.

    Ctrl-C raises Interrupted after the current epoch's checkpoint: rerunning the same sweep
    reuses the completed runs and resumes the interrupted ones. `transfer` (Ray only): "auto"
    writes straight into the root where the worker's node sees it, "bytes" always ships runs
    back as bytes, as a node without the shared filesystem does.
    """
    if transfer not in ("auto", "bytes"):
        raise UsageError(f"transfer must be 'auto' or 'bytes', got {transfer!r}")
    root = artifacts.resolve_root(root)
    data.load(data_dir)  # verify (or download) once, before any run starts
    if cpus_per_run < 1:
        raise UsageError(f"--cpus-per-run must be >= 1, got {cpus_per_run}")
    if max_concurrent is not None and max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    if state.backend == "local":
        if address:
            raise UsageError("--address joins a Ray cluster; it needs --backend ray")
        if max_concurrent not in (None, 1):
            raise UsageError(
                "--max-concurrent applies to --backend ray; the local backend trains one run at "
                "a time because TensorFlow already uses every core. Use --backend ray to run "
                "several at once"
            )
        run_local(state, root, data_dir, monitor)
    else:
        run_ray(state, root=root, data_dir=data_dir, address=address, max_concurrent=max_concurrent,
                 cpus_per_run=cpus_per_run, transfer=transfer, monitor=monitor)
    state.finished = time.time()
    return state


def run_local(state: SweepState, root: Path, data_dir, monitor: Monitor | None) -> None:
    from toolkit.training import train as train_mod
    from toolkit.training.train import TrainRequest

    for run in state.runs:
        state.mark_running(run)
        if monitor:
            monitor(state)

        def hook(epoch: int, total: int, logs: dict[str, float], run=run) -> None:
            run.epoch, run.logs = epoch, logs
            if monitor:
                monitor(state)

        try:
            result = train_mod.train(TrainRequest(run.spec, seed=run.seed, epochs=run.spec.epochs,
                                                  limit_train=run.limit_train, root=root, data_dir=data_dir,
                                                  resume=True), promote=False, on_epoch=hook)
        except (Interrupted, KeyboardInterrupt):
            with state.lock:
                run.state = "queued"
            raise interrupted(state) from None
        except Exception as exc:  # isolation: one failing run must not stop the sweep
            finish_run(state, run, error=describe_error(exc))
        else:
            finish_run(state, run, metrics=result.metrics, run_dir=result.run_dir,
                    reused=result.reused)
        run.node = socket.gethostname()
        if monitor:
            monitor(state)


# ---------------------------------------------------------------- Ray backend


def collect(state: SweepState, *, root: Path | None = None,
            data_dir: Path | None = None) -> SweepState:
    """Fill `state` from completed runs only (no training): what `--table` shows.

    A run that is not complete keeps the error the last sweep recorded for it, if any."""
    root = artifacts.resolve_root(root)
    checksums = data.load(data_dir).checksums
    previous = previous_errors(root)
    for run in finish_completed(state, root, checksums):
        if run.key in previous:
            finish_run(state, run, error=previous[run.key])
        else:
            run.state = "missing"
    return state


def previous_errors(root: Path) -> dict[str, str]:
    path = root / "sweep.json"
    if not path.is_file():
        return {}
    try:
        recorded = artifacts.read_json(path, what="sweep record")
        return {r["key"]: r["error"] for r in recorded.get("runs", []) if r.get("error")}
    except (ArtifactError, AttributeError, KeyError, TypeError):
        return {}  # the record only annotates; a damaged one must not block the table
