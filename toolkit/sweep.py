"""Sweeps: train many (spec, seed) runs, locally or on a Ray cluster, and tabulate them.

Every run goes through `toolkit.train.train(..., promote=False)`, so a sweep shares the run
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

Results: `summarize` turns completed runs into one row per spec (mean +- std, range over seeds,
the seed's reported figures, the difference, ranks); `write_outputs` writes ROOT/sweep.md,
ROOT/sweep.csv, ROOT/sweep.png and ROOT/sweep.json (the last sweep's run statuses, so that
`toolkit sweep --table` can still show why a run is missing).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import artifacts, data
from toolkit.errors import ArtifactError, Interrupted, PartialFailure, ToolkitError, UsageError
from toolkit.families import FAMILIES
from toolkit.specs import Spec, match_specs, study_specs, with_overrides
from toolkit.stats import Interval, Spread, interval_of_accuracy, seed_spread

BACKENDS = ("local", "ray")
# The figures the seed reports for every spec (its Tables 3 and 4); test loss it does not report.
FIGURES = ("test_accuracy", "test_loss", "train_accuracy", "train_loss", "val_accuracy",
           "val_loss", "train_seconds")
# A local Ray instance's shared-memory object store defaults to 30% of RAM (about 7 GiB on a
# 24 GiB box), pinned in /dev/shm. Runs return at most a few tens of MB, so 512 MiB is plenty.
OBJECT_STORE_BYTES = 512 * 1024**2
RAY_INSTALL_HINT = "pip install '.[ray]'  (or: pip install 'ray>=2.9')"


# ---------------------------------------------------------------- plan and state


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
    from toolkit import precision

    # Without patterns a sweep reproduces the study's tables: its 17 specs.
    chosen = match_specs(patterns) if patterns else study_specs()
    specs = [with_overrides(s, epochs=epochs,
                            mixed_precision=precision.resolve(mixed_precision or s.mixed_precision))
             for s in chosen]
    from toolkit.train import check_limit_train

    for spec in specs:
        check_limit_train(limit_train, fraction=spec.validation_fraction)
    runs = [RunStatus(spec, seed, limit_train) for spec in specs for seed in range(seeds)]
    return SweepState(runs, epochs, seeds, limit_train, backend)


def _manifest(run: RunStatus, checksums: dict[str, str], root: Path) -> dict[str, Any] | None:
    """The manifest `train` gives this run (None: a student whose teacher is not trained here)."""
    from toolkit import distill
    from toolkit.specs import run_variant

    try:
        teacher = distill.teacher_record(run.spec, root)
    except ArtifactError:
        return None
    return artifacts.make_manifest(run.spec, seed=run.seed, epochs=run.spec.epochs,
                                   limit_train=run.limit_train, data_checksums=checksums,
                                   mixed_precision=run.spec.mixed_precision, variant=run_variant(run.spec),
                                   teacher=teacher)


def _describe(exc: BaseException) -> str:
    message = exc.message if isinstance(exc, ToolkitError) else str(exc)
    first = (message.strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


# ---------------------------------------------------------------- running


Monitor = Callable[[SweepState], None]


def run_sweep(state: SweepState, *, root: str | Path | None = None,
              data_dir: str | Path | None = None, address: str | None = None,
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
        _run_local(state, root, data_dir, monitor)
    else:
        _run_ray(state, root=root, data_dir=data_dir, address=address, max_concurrent=max_concurrent,
                 cpus_per_run=cpus_per_run, transfer=transfer, monitor=monitor)
    state.finished = time.time()
    return state


def _finish(state: SweepState, run: RunStatus, *, metrics=None, run_dir=None, reused=False,
            error: str | None = None) -> None:
    with state.lock:
        run.finished = time.time()
        if error is not None:
            run.state, run.error = "failed", error
            return
        run.state = "reused" if reused else "trained"
        run.metrics, run.run_dir = metrics, run_dir
        run.epoch = run.spec.epochs


def _interrupted(state: SweepState) -> Interrupted:
    counts = state.counts()
    return Interrupted(
        f"sweep interrupted with {counts['trained'] + counts['reused']}/{len(state.runs)} runs "
        "complete; completed runs are kept and the interrupted ones keep their last finished "
        "epoch. Resume by running the same toolkit sweep command again"
    )


def _run_local(state: SweepState, root: Path, data_dir, monitor: Monitor | None) -> None:
    from toolkit import train as train_mod

    for run in state.runs:
        state.mark_running(run)
        if monitor:
            monitor(state)

        def hook(epoch: int, total: int, logs: dict[str, float], run=run) -> None:
            run.epoch, run.logs = epoch, logs
            if monitor:
                monitor(state)

        try:
            result = train_mod.train(run.spec, seed=run.seed, epochs=run.spec.epochs,
                                     limit_train=run.limit_train, root=root, data_dir=data_dir,
                                     resume=True, promote=False, on_epoch=hook)
        except (Interrupted, KeyboardInterrupt):
            with state.lock:
                run.state = "queued"
            raise _interrupted(state) from None
        except Exception as exc:  # isolation: one failing run must not stop the sweep
            _finish(state, run, error=_describe(exc))
        else:
            _finish(state, run, metrics=result.metrics, run_dir=result.run_dir,
                    reused=result.reused)
        run.node = socket.gethostname()
        if monitor:
            monitor(state)


# ---------------------------------------------------------------- Ray backend


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(f"--backend ray needs Ray, which is not installed; install it with: "
                         f"{RAY_INSTALL_HINT}") from None
    return ray


class _ProgressBoard:
    """A Ray actor the tasks report finished epochs to; the caller polls it."""

    def __init__(self) -> None:
        self.epochs: dict[str, tuple[int, dict[str, float]]] = {}

    def report(self, key: str, epoch: int, logs: dict[str, float]) -> None:
        self.epochs[key] = (epoch, logs)

    def snapshot(self) -> dict[str, tuple[int, dict[str, float]]]:
        return dict(self.epochs)


def _ray_task(*, spec_name: str, seed: int, epochs: int, limit_train: int | None,
              data_dir: str | None, root: str, token: str, cpus: int, board,
              mixed_precision: str = "off") -> dict[str, Any]:
    """Train one run on a Ray worker.

    Workers are reused between the tasks of one sweep: a fresh process per task paid ~8 s of
    start-up and TensorFlow import per run (measured on the DNN specs). Each run reseeds
    everything itself, and the Keras session is cleared after it, so reuse changes no result.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from toolkit._tf import keras, tf  # quiet import, before anything else pulls TensorFlow in

    # Honour the declared CPUs, or two tasks on one node would each spawn a thread per core.
    # TensorFlow accepts this only before its first op, i.e. in a worker's first task; every
    # task of a sweep declares the same CPUs, so later tasks find it already set.
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, cpus)))
    from toolkit import train as train_mod

    key = f"{spec_name}/{artifacts.run_id(seed, epochs, limit_train, mixed_precision)}"

    def hook(epoch: int, total: int, logs: dict[str, float]) -> None:
        board.report.remote(key, epoch, logs)

    shared = (Path(root) / token).is_file()
    common = dict(seed=seed, epochs=epochs, limit_train=limit_train, data_dir=data_dir,
                  promote=False, on_epoch=hook, mixed_precision=mixed_precision)
    try:
        if shared:
            result = train_mod.train(spec_name, root=root, resume=True, **common)
            return {"metrics": result.metrics, "reused": result.reused, "files": None,
                    "node": socket.gethostname()}
        with tempfile.TemporaryDirectory(prefix="toolkit-sweep-") as tmp:
            result = train_mod.train(spec_name, root=tmp, **common)
            files = {name: (result.run_dir / name).read_bytes()
                     for name in (*artifacts.RUN_FILES, *artifacts.OPTIONAL_RUN_FILES)
                     if (result.run_dir / name).is_file()}
        return {"metrics": result.metrics, "reused": False, "files": files,
                "node": socket.gethostname()}
    finally:
        keras.backend.clear_session()  # the worker lives on; the run's graph must not


def install_run(root: Path, run: RunStatus, files: dict[str, bytes],
                checksums: dict[str, str]) -> Path:
    """Put a run trained elsewhere into ROOT/NAME/runs/<run-id>/ in one rename, as train does."""
    arts = artifacts.spec_artifacts(run.spec.name, root)
    manifest = _manifest(run, checksums, root)
    if manifest is None:
        raise ArtifactError(f"{run.key}: its teacher is not trained under {root}; train it first")
    rid = manifest["run_id"]
    with artifacts.exclusive_lock(arts.lock_file(rid), what=f"run {run.spec.name}/{rid}",
                                  wait=True):
        existing = artifacts.completed_run(arts, manifest)
        if existing is not None:
            return existing
        staging = artifacts.make_private_dir(arts.runs_dir, f".{rid}.staging-")
        try:
            for name in (*artifacts.RUN_FILES, *artifacts.OPTIONAL_RUN_FILES):
                if name in files or name in artifacts.RUN_FILES:
                    artifacts.write_bytes(staging / name, files[name])
            final = arts.run_dir(rid)
            if final.exists():  # an incomplete leftover; completed_run said it is not reusable
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    if artifacts.completed_run(arts, manifest) is None:
        raise ArtifactError(f"{final}: the run returned by the worker does not carry the "
                            "expected manifest (spec, seed, epochs, data); it was not counted")
    return final


def _start_ray(ray, address: str | None) -> bool:
    """Connect to `address`, or start a small local instance; True when we started it."""
    if ray.is_initialized():
        return False
    quiet = not os.environ.get("TOOLKIT_VERBOSE")
    env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    # Ray's stray-output warnings about the "uv run" / metrics agents are noise here.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = dict(runtime_env={"env_vars": env}, log_to_driver=not quiet,
                                  logging_level="ERROR", configure_logging=True)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=OBJECT_STORE_BYTES,
                     include_dashboard=False, **kwargs)
    except ConnectionError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address!r} ({exc}); expected the "
                         "address of a running head node (ray start --head)") from None
    return True


def _run_ray(state: SweepState, *, root: Path, data_dir, address: str | None,
             max_concurrent: int | None, cpus_per_run: int, transfer: str,
             monitor: Monitor | None) -> None:
    ray = import_ray()
    checksums = data.load(data_dir).checksums
    # The caller's own reuse check, the same rule train applies, so reused runs cost no task.
    todo = _finish_completed(state, root, checksums)
    if monitor:
        monitor(state)
    if not todo:
        return
    started = _start_ray(ray, address)
    root.mkdir(parents=True, exist_ok=True)
    token = f".sweep-{uuid.uuid4().hex}.token"
    if transfer == "auto":
        artifacts.write_text(root / token, socket.gethostname() + "\n")
    try:
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        if cpus_per_run > cluster_cpus:
            raise UsageError(f"--cpus-per-run {cpus_per_run} exceeds the cluster's {cluster_cpus} "
                             "CPUs; lower it")
        window = max_concurrent or max(1, cluster_cpus // cpus_per_run)
        board = ray.remote(num_cpus=0)(_ProgressBoard).remote()
        task = ray.remote(max_retries=0)(_ray_task).options(num_cpus=cpus_per_run)
        pending = list(todo)
        inflight: dict[Any, RunStatus] = {}
        data_arg = str(data_dir) if data_dir else None
        try:
            while pending or inflight:
                while pending and len(inflight) < window:
                    run = pending.pop(0)
                    ref = task.remote(spec_name=run.spec.name, seed=run.seed, epochs=run.spec.epochs,
                                      limit_train=run.limit_train, data_dir=data_arg, root=str(root),
                                      token=token, cpus=cpus_per_run, board=board,
                                      mixed_precision=run.spec.mixed_precision)
                    inflight[ref] = run
                    state.mark_running(run)
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for key_epoch in ray.get(board.snapshot.remote()).items():
                    _apply_epoch(state, inflight.values(), *key_epoch)
                for ref in ready:
                    run = inflight.pop(ref)
                    try:
                        out = ray.get(ref)
                        run.node = out["node"]
                        run_dir = (install_run(root, run, out["files"], checksums) if out["files"]
                                   else artifacts.spec_artifacts(run.spec.name, root).run_dir(
                                       out["metrics"]["run_id"]))
                    except Exception as exc:  # isolation, as in the local backend
                        cause = getattr(exc, "cause", None) or exc
                        _finish(state, run, error=_describe(cause))
                    else:
                        _finish(state, run, metrics=out["metrics"], run_dir=run_dir,
                                reused=out["reused"])
                if monitor:
                    monitor(state)
        except KeyboardInterrupt:
            for ref, run in inflight.items():
                ray.cancel(ref, force=True)
                run.state = "queued"
            raise _interrupted(state) from None
    finally:
        (root / token).unlink(missing_ok=True)
        if started:
            ray.shutdown()


def _apply_epoch(state: SweepState, running: Iterable[RunStatus], key: str,
                 value: tuple[int, dict[str, float]]) -> None:
    for run in running:
        if run.key == key and run.state == "running":
            with state.lock:
                run.epoch, run.logs = value


# ---------------------------------------------------------------- collecting and summarizing


def collect(state: SweepState, *, root: str | Path | None = None,
            data_dir: str | Path | None = None) -> SweepState:
    """Fill `state` from completed runs only (no training): what `--table` shows.

    A run that is not complete keeps the error the last sweep recorded for it, if any."""
    root = artifacts.resolve_root(root)
    checksums = data.load(data_dir).checksums
    previous = _previous_errors(root)
    for run in _finish_completed(state, root, checksums):
        if run.key in previous:
            _finish(state, run, error=previous[run.key])
        else:
            run.state = "missing"
    return state


def _finish_completed(state: SweepState, root: Path, checksums: dict[str, str]) -> list[RunStatus]:
    """Mark every run with a completed, matching run on disk as reused; return the others."""
    remaining: list[RunStatus] = []
    for run in state.runs:
        arts = artifacts.spec_artifacts(run.spec.name, root)
        manifest = _manifest(run, checksums, root)
        existing = artifacts.completed_run(arts, manifest) if manifest is not None else None
        if existing is not None:
            metrics = artifacts.read_json(existing / "metrics.json", what="metrics")
            _finish(state, run, metrics=metrics, run_dir=existing, reused=True)
        else:
            remaining.append(run)
    return remaining


def _previous_errors(root: Path) -> dict[str, str]:
    path = root / "sweep.json"
    if not path.is_file():
        return {}
    try:
        recorded = artifacts.read_json(path, what="sweep record")
        return {r["key"]: r["error"] for r in recorded.get("runs", []) if r.get("error")}
    except (ArtifactError, AttributeError, KeyError, TypeError):
        return {}  # the record only annotates; a damaged one must not block the table


# Mean, sample std over seeds (None with one seed) and range: toolkit.stats, as everywhere.
Stat = Spread
_stat = seed_spread
# Accuracy figures and the metrics.json count of images each is a fraction of.
ACCURACY_IMAGES = {"test_accuracy": "test_images", "train_accuracy": "train_images",
                   "val_accuracy": "val_images"}


@dataclass(frozen=True)
class SpecRow:
    spec: Spec
    runs: list[RunStatus]
    stats: dict[str, Stat | None]
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
        stats = {fig: _stat([float(r.metrics[fig]) for r in runs
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


def fmt_stat(stat: Stat | None, *, digits: int = 4, show_range: bool = True) -> str:
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
            line += [fmt_stat(row.stats[fig], show_range=fig == "test_accuracy"),
                     f"{ci.low:.4f}–{ci.high:.4f}" if ci else "-",
                     _num(row.reported(fig)), _num(row.diff(fig), signed=True)]
        out.append(line)
    return out


def loss_rows(rows: list[SpecRow]) -> list[list[str]]:
    out = []
    for row in rows:
        line = [row.spec.name, fmt_stat(row.stats["test_loss"], show_range=False)]
        for fig in ("train_loss", "val_loss"):
            line += [fmt_stat(row.stats[fig], show_range=False), _num(row.reported(fig)),
                     _num(row.diff(fig), signed=True)]
        line += [fmt_stat(row.stats["train_seconds"], digits=1, show_range=False),
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


def output_paths(root: str | Path | None = None) -> SweepOutputs:
    base = artifacts.resolve_root(root)
    return SweepOutputs(base / "sweep.md", base / "sweep.csv", base / "sweep.png",
                        base / "sweep.json")


def write_outputs(state: SweepState, rows: list[SpecRow], root: str | Path | None = None, *,
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
