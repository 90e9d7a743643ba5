"""Per-epoch resume state, written off the training thread.

At the end of each epoch the training thread copies the model's variables (weights and the
dropout layers' seed states) and the optimizer's variables into numpy arrays (tens of
milliseconds for Exp6's 133 MB) and hands them to a writer thread, then trains on. The writer
commits the epoch in two atomic steps inside ROOT/NAME/runs/.<run-id>.partial/:

    checkpoint-e<N>.npz   the arrays (written to a temporary name, renamed into place)
    progress.json         names that file, with the history, epochs done, seconds and manifest

and then removes older checkpoints. progress.json is the commit record: it only ever names a
complete file, so a kill at any moment (even mid-write) leaves the previous epoch resumable and
a half-written file is never read. One write is in flight at a time; the next epoch's snapshot
waits for it, and an error of the writer (disk full) surfaces at the next epoch or at the end.

Restoring the seed states as well as the weights makes a resumed run continue exactly as an
uninterrupted one: same data order (keyed by seed and epoch), same dropout masks, same updates.
"""

from __future__ import annotations

import json
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import artifacts

FORMAT = 2  # 1: checkpoint.keras beside progress.json (not resumable by this version)
PROGRESS = "progress.json"


@dataclass
class Snapshot:
    """One completed epoch's state, as host copies the training thread no longer touches."""

    model: list[np.ndarray]
    model_paths: list[str]
    optimizer: list[np.ndarray]
    optimizer_paths: list[str]

    @classmethod
    def take(cls, model: Any) -> Snapshot:
        opt = list(model.optimizer.variables) if model.optimizer is not None else []
        variables = list(model.variables)
        return cls([np.array(v.numpy(), copy=True) for v in variables], [v.path for v in variables],
                   [np.array(v.numpy(), copy=True) for v in opt], [v.path for v in opt])

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.model, *self.optimizer))

    def save(self, target: Path) -> None:
        arrays = {f"m{i:04d}": a for i, a in enumerate(self.model)}
        arrays.update({f"o{i:04d}": a for i, a in enumerate(self.optimizer)})
        meta = {"model_paths": self.model_paths, "optimizer_paths": self.optimizer_paths}
        with artifacts.atomic_path(target) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            model = [npz[f"m{i:04d}"] for i in range(len(meta["model_paths"]))]
            opt = [npz[f"o{i:04d}"] for i in range(len(meta["optimizer_paths"]))]
        return cls(model, meta["model_paths"], opt, meta["optimizer_paths"])

    def restore(self, model: Any) -> None:
        """Assign the arrays to a freshly built and compiled model of the same spec and mode."""
        if self.optimizer:
            model.optimizer.build(model.trainable_variables)
        _assign(model.variables, self.model, self.model_paths)
        _assign(model.optimizer.variables if self.optimizer else [], self.optimizer, self.optimizer_paths)


def _leaf(path: str) -> str:
    # Layer, optimizer and seed-generator names get numbered suffixes per process; leaves do not.
    return path.rsplit("/", 1)[-1]


def _assign(variables: list[Any], arrays: list[np.ndarray], paths: list[str]) -> None:
    if len(variables) != len(arrays):
        raise ValueError(f"checkpoint holds {len(arrays)} variables, the model has {len(variables)}")
    for var, arr, path in zip(variables, arrays, paths, strict=True):
        if _leaf(var.path) != _leaf(path) or tuple(var.shape) != arr.shape:
            raise ValueError(f"checkpoint variable {path} {arr.shape} does not fit {var.path} "
                             f"{tuple(var.shape)}")
        var.assign(arr)


@dataclass
class ResumeState:
    history: dict[str, list[float]]
    epochs_done: int
    seconds: float
    snapshot: Snapshot


def saved_epochs(partial: Path) -> int:
    """How many completed epochs an interrupted run's folder holds (0 when unreadable)."""
    try:
        return int(json.loads((partial / PROGRESS).read_text()).get("epochs_done", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def load_resume(partial: Path, manifest: dict[str, Any]) -> ResumeState | None:
    """The last committed epoch of an interrupted run with this manifest, or None (nothing to
    resume, another run's state, an older format, or a damaged file: training starts over)."""
    try:
        state = json.loads((partial / PROGRESS).read_text())
        if state.get("format") != FORMAT or state.get("manifest") != manifest:
            return None
        snapshot = Snapshot.load(partial / state["checkpoint"])
        return ResumeState(state["history"], int(state["epochs_done"]), float(state["seconds"]), snapshot)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None


class CheckpointWriter:
    """Commits snapshots in a background thread, one at a time, in epoch order."""

    def __init__(self, partial: Path, manifest: dict[str, Any]) -> None:
        self.partial = partial
        self.manifest = manifest
        self.committed = 0  # epochs whose state is on disk
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, snapshot: Snapshot, *, epochs_done: int, history: dict[str, list[float]],
               seconds: float) -> None:
        """Start writing `snapshot` (waiting first for the previous write, whose error is raised)."""
        self.wait()
        progress = {"format": FORMAT, "manifest": self.manifest,
                    "checkpoint": f"checkpoint-e{epochs_done:04d}.npz", "epochs_done": epochs_done,
                    "seconds": seconds, "history": {k: list(v) for k, v in history.items()}}
        self._thread = threading.Thread(target=self._write, args=(snapshot, progress),
                                        name="toolkit-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in flight is committed; re-raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self, snapshot: Snapshot, progress: dict[str, Any]) -> None:
        try:
            self.partial.mkdir(parents=True, exist_ok=True)
            snapshot.save(self.partial / progress["checkpoint"])
            artifacts.write_json(self.partial / PROGRESS, progress)
            self.committed = progress["epochs_done"]
            for old in self.partial.glob("checkpoint-e*.npz"):
                if old.name != progress["checkpoint"]:
                    old.unlink(missing_ok=True)
        except BaseException as exc:  # raised on the training thread at the next wait()
            self._error = exc
