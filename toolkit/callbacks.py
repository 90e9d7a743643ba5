"""Keras callbacks used by training: resume checkpoints, epoch hooks, the rich display."""

from __future__ import annotations

import time
from pathlib import Path

from toolkit import artifacts
from toolkit._tf import keras
from toolkit.specs import Spec


class PartialCheckpoint(keras.callbacks.Callback):
    """Saves model + optimizer state and history after every epoch, atomically."""

    def __init__(self, partial: Path, manifest, history, seconds_before: float) -> None:
        super().__init__()
        self.partial = partial
        self.manifest = manifest
        self.history = {k: list(v) for k, v in history.items()}
        self.seconds = seconds_before
        self.epochs_done = len(next(iter(self.history.values()), []))
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += time.perf_counter() - self._started
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.epochs_done = epoch + 1
        self.partial.mkdir(parents=True, exist_ok=True)
        with artifacts.atomic_path(self.partial / "checkpoint.keras") as tmp:
            self.model.save(tmp)
        artifacts.write_json(self.partial / "progress.json", {
            "manifest": self.manifest, "history": self.history,
            "epochs_done": self.epochs_done, "seconds": self.seconds,
        })


class EpochHookCallback(keras.callbacks.Callback):
    def __init__(self, hook, epochs: int) -> None:
        super().__init__()
        self.hook, self.epochs = hook, epochs

    def on_epoch_end(self, epoch, logs=None):
        self.hook(epoch + 1, self.epochs, {k: float(v) for k, v in (logs or {}).items()})


class RichProgress(keras.callbacks.Callback):
    """Live epochs/steps bars with loss and accuracy, instead of Keras' line noise."""

    def __init__(self, spec: Spec, steps: int, initial_epoch: int, console) -> None:
        super().__init__()
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
            console=console, transient=False,
        )
        self.epoch_task = self.progress.add_task(
            f"{spec.name} epochs", total=spec.epochs, completed=initial_epoch, stats="")
        self.step_task = self.progress.add_task("  steps", total=steps, stats="")
        self.progress.start()

    def on_epoch_begin(self, epoch, logs=None):
        self.progress.reset(self.step_task, description=f"  epoch {epoch + 1} steps", stats="")

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        stats = f"loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f}"
        self.progress.update(self.step_task, completed=batch + 1, stats=stats)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        stats = (f"loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f} "
                 f"val_loss {logs.get('val_loss', 0):.4f} val_acc {logs.get('val_accuracy', 0):.4f}")
        self.progress.update(self.epoch_task, completed=epoch + 1, stats=stats)

    def stop(self) -> None:
        self.progress.stop()
