"""The Ray backend of a sweep: each run a Ray task declaring `cpus_per_run` CPUs.

Where the task's node sees the caller's artifacts root (a token file the caller wrote there is
visible), it trains straight into that root, with the same locks and resume state as a local
run. Elsewhere (a node of a multi-node cluster without a shared filesystem) it trains into a
temporary root on its own node and returns the run's files as bytes; the caller installs them
into its root atomically, under the run's lock, and checks the manifest before counting the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from toolkit.core import artifacts, data
from toolkit.core.errors import ArtifactError, UsageError
from toolkit.experiments.sweep_plan import (
    Monitor,
    RunStatus,
    SweepState,
    describe_error,
    finish_completed,
    finish_run,
    interrupted,
    run_manifest,
)

# A local Ray instance's shared-memory object store defaults to 30% of RAM (about 7 GiB on a
# 24 GiB box), pinned in /dev/shm. Runs return at most a few tens of MB, so 512 MiB is plenty.
OBJECT_STORE_BYTES = 512 * 1024**2
RAY_INSTALL_HINT = "pip install '.[ray]'  (or: pip install 'ray>=2.9')"


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


def user_specs_payload() -> tuple[str, str] | None:
    """(source, text) of the loaded user spec file, for a Ray task: its node may not see the file."""
    from toolkit.specs.registry import user_spec_file

    path = user_spec_file()
    return (str(path), path.read_text(encoding="utf-8")) if path is not None and path.is_file() else None


def load_user_specs(payload: tuple[str, str] | None) -> None:
    """In a Ray worker: the caller's user specs, from the text the task carried."""
    if payload is None:
        return
    from toolkit.specs.registry import use_spec_text
    from toolkit.specs.user import SPECS_ENV

    os.environ.pop(SPECS_ENV, None)  # the caller's path may not exist on this node: the text rules
    use_spec_text(payload[1], payload[0])


def _ray_task(*, spec_name: str, seed: int, epochs: int, limit_train: int | None,
              data_dir: str | None, root: str, token: str, cpus: int, board,
              mixed_precision: str = "off", specs: tuple[str, str] | None = None) -> dict[str, Any]:
    """Train one run on a Ray worker (`specs`: the caller's user spec file, as text).

    Workers are reused between the tasks of one sweep: a fresh process per task paid ~8 s of
    start-up and TensorFlow import per run (measured on the DNN specs). Each run reseeds
    everything itself, and the Keras session is cleared after it, so reuse changes no result.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from toolkit.core.tf import keras, tf  # quiet import, before anything else pulls TensorFlow in

    # Honour the declared CPUs, or two tasks on one node would each spawn a thread per core.
    # TensorFlow accepts this only before its first op, i.e. in a worker's first task; every
    # task of a sweep declares the same CPUs, so later tasks find it already set.
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, cpus)))
    from toolkit.training import train as train_mod
    from toolkit.training.train import TrainRequest

    load_user_specs(specs)
    key = f"{spec_name}/{artifacts.run_id(seed, epochs, limit_train, mixed_precision)}"

    def hook(epoch: int, total: int, logs: dict[str, float]) -> None:
        board.report.remote(key, epoch, logs)

    shared = (Path(root) / token).is_file()
    def request(run_root: str, resume: bool) -> TrainRequest:
        return TrainRequest(spec_name, seed=seed, epochs=epochs, limit_train=limit_train, root=Path(run_root),
                            data_dir=Path(data_dir) if data_dir else None, resume=resume,
                            mixed_precision=mixed_precision)

    try:
        if shared:
            result = train_mod.train(request(root, True), promote=False, on_epoch=hook)
            return {"metrics": result.metrics, "reused": result.reused, "files": None,
                    "node": socket.gethostname()}
        with tempfile.TemporaryDirectory(prefix="toolkit-sweep-") as tmp:
            result = train_mod.train(request(tmp, False), promote=False, on_epoch=hook)
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
    manifest = run_manifest(run, checksums, root)
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


def start_ray(ray, address: str | None) -> bool:
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


def run_ray(state: SweepState, *, root: Path, data_dir, address: str | None,
            max_concurrent: int | None, cpus_per_run: int, transfer: str,
            monitor: Monitor | None) -> None:
    ray = import_ray()
    checksums = data.load(data_dir).checksums
    # The caller's own reuse check, the same rule train applies, so reused runs cost no task.
    todo = finish_completed(state, root, checksums)
    if monitor:
        monitor(state)
    if not todo:
        return
    started = start_ray(ray, address)
    root.mkdir(parents=True, exist_ok=True)
    token = f".sweep-{uuid.uuid4().hex}.token"
    if transfer == "auto":
        artifacts.write_text(root / token, socket.gethostname() + "\n")
    try:
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        if cpus_per_run > cluster_cpus:
            raise UsageError(f"--cpus-per-run {cpus_per_run} exceeds the cluster's {cluster_cpus} "
                             "CPUs; lower it")
        task = ray.remote(max_retries=0)(_ray_task).options(num_cpus=cpus_per_run)
        launch = dict(data_dir=str(data_dir) if data_dir else None, root=str(root), token=token,
                      cpus=cpus_per_run, board=ray.remote(num_cpus=0)(_ProgressBoard).remote(),
                      specs=user_specs_payload())
        _drive(ray, state, todo, task, launch, window=max_concurrent or max(1, cluster_cpus // cpus_per_run),
               root=root, checksums=checksums, monitor=monitor)
    finally:
        (root / token).unlink(missing_ok=True)
        if started:
            ray.shutdown()


def _drive(ray, state: SweepState, todo: list[RunStatus], task, launch: dict[str, Any], *, window: int,
           root: Path, checksums: dict[str, str], monitor: Monitor | None) -> None:
    """Keep `window` runs in flight until every run is done; Ctrl-C cancels the ones in flight."""
    pending = list(todo)
    inflight: dict[Any, RunStatus] = {}
    try:
        while pending or inflight:
            while pending and len(inflight) < window:
                run = pending.pop(0)
                ref = task.remote(spec_name=run.spec.name, seed=run.seed, epochs=run.spec.epochs,
                                  limit_train=run.limit_train, mixed_precision=run.spec.mixed_precision,
                                  **launch)
                inflight[ref] = run
                state.mark_running(run)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for key_epoch in ray.get(launch["board"].snapshot.remote()).items():
                _apply_epoch(state, inflight.values(), *key_epoch)
            for ref in ready:
                _collect(ray, ref, inflight.pop(ref), state, root=root, checksums=checksums)
            if monitor:
                monitor(state)
    except KeyboardInterrupt:
        for ref, run in inflight.items():
            ray.cancel(ref, force=True)
            run.state = "queued"
        raise interrupted(state) from None


def _collect(ray, ref, run: RunStatus, state: SweepState, *, root: Path, checksums: dict[str, str]) -> None:
    """A finished task's run, installed (or found) in the root; its failure recorded, not raised."""
    try:
        out = ray.get(ref)
        run.node = out["node"]
        run_dir = (install_run(root, run, out["files"], checksums) if out["files"]
                   else artifacts.spec_artifacts(run.spec.name, root).run_dir(out["metrics"]["run_id"]))
    except Exception as exc:  # isolation, as in the local backend
        cause = getattr(exc, "cause", None) or exc
        finish_run(state, run, error=describe_error(cause))
    else:
        finish_run(state, run, metrics=out["metrics"], run_dir=run_dir, reused=out["reused"])


def _apply_epoch(state: SweepState, running: Iterable[RunStatus], key: str,
                 value: tuple[int, dict[str, float]]) -> None:
    for run in running:
        if run.key == key and run.state == "running":
            with state.lock:
                run.epoch, run.logs = value
