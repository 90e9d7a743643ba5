"""Keras callbacks used by training: resume checkpoints, epoch hooks, the rich display."""

from __future__ import annotations

import time
from pathlib import Path

from toolkit.core.tf import keras
from toolkit.specs import Spec
from toolkit.training.checkpoint import CheckpointWriter, Snapshot


class PartialCheckpoint(keras.callbacks.Callback):
    """Hands model + optimizer state and history to a background writer after every epoch
    (toolkit.checkpoint); the training thread only copies the variables."""

    def __init__(self, partial: Path, manifest, history, seconds_before: float) -> None:
        super().__init__()
        self.writer = CheckpointWriter(partial, manifest)
        self.history = {k: list(v) for k, v in history.items()}
        self.seconds = seconds_before
        self.epochs_done = len(next(iter(self.history.values()), []))
        self.writer.committed = self.epochs_done
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += time.perf_counter() - self._started
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.epochs_done = epoch + 1
        self.writer.submit(Snapshot.take(self.model), epochs_done=self.epochs_done, history=self.history,
                           seconds=self.seconds)

    def finish(self) -> int:
        """Wait for the last write; returns the epochs whose state is on disk (what --resume continues)."""
        self.writer.wait()
        return self.writer.committed


class EpochHookCallback(keras.callbacks.Callback):
    def __init__(self, hook, epochs: int) -> None:
        super().__init__()
        self.hook, self.epochs = hook, epochs

    def on_epoch_end(self, epoch, logs=None):
        self.hook(epoch + 1, self.epochs, {k: float(v) for k, v in (logs or {}).items()})


class RichProgress(keras.callbacks.Callback):
    """Live epochs/steps bars with loss, accuracy and images per second, instead of Keras' line
    noise, under a header naming the run (spec, seed, batch, resolved precision)."""

    def __init__(self, spec: Spec, steps: int, initial_epoch: int, console, *, header: str = "",
                 n_train: int | None = None) -> None:
        super().__init__()
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.batch_size = spec.batch_size
        self.n_train = n_train or steps * spec.batch_size
        self._epoch_started = 0.0
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
            console=console, transient=False,
        )
        if header:
            self.progress.console.print(header, highlight=False)
        self.epoch_task = self.progress.add_task(
            f"{spec.name} epochs", total=spec.epochs, completed=initial_epoch, stats="")
        self.step_task = self.progress.add_task("  steps", total=steps, stats="")
        self.progress.start()

    def _images_per_s(self, steps_done: int) -> float:
        elapsed = time.perf_counter() - self._epoch_started
        return min(steps_done * self.batch_size, self.n_train) / elapsed if elapsed > 0 else 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()
        self.progress.reset(self.step_task, description=f"  epoch {epoch + 1} steps", stats="")

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        stats = (f"loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f} "
                 f"{self._images_per_s(batch + 1):,.0f} img/s")
        self.progress.update(self.step_task, completed=batch + 1, stats=stats)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        # Over the whole epoch, validation included: what the run's throughput really is.
        rate = self.n_train / (time.perf_counter() - self._epoch_started)
        stats = (f"loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f} "
                 f"val_loss {logs.get('val_loss', 0):.4f} val_acc {logs.get('val_accuracy', 0):.4f} "
                 f"{rate:,.0f} img/s")
        self.progress.update(self.epoch_task, completed=epoch + 1, stats=stats)

    def stop(self) -> None:
        self.progress.stop()
