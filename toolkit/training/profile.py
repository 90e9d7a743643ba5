"""Where one training epoch's time goes: `toolkit profile --exp NAME`.

Each category is timed alone, after a warm-up, over one epoch's worth of batches, as wall time
and as CPU time of the process (every thread): on this 2-core machine the input pipeline
(augmentation) runs on the same cores as the model, so a category's CPU seconds are what it
takes from the model even when fit overlaps it through prefetching.

    input            the tf.data pipeline alone, with the recipe's augmentation
    input, no aug    the same without augmentation (what augmentation costs)
    forward+backward loss and gradients
    optimizer        applying one set of gradients per step (EMA included, when the recipe has it)
    fit (training)   Keras's training epoch: the above overlapped, plus metrics
    validation       the holdout, once
    checkpoint       the resume snapshot on the training thread
    epoch            what `toolkit train` runs per epoch (fit with validation and the callbacks)
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CATEGORIES = (
    ("input", "input pipeline with the recipe's augmentation (overlapped in fit)"),
    ("input_plain", "input pipeline without augmentation"),
    ("forward_backward", "forward + backward (loss, gradients)"),
    ("optimizer", "optimizer (one update per step)"),
    ("fit_train", "fit, training only (the above overlapped, plus metrics)"),
    ("validation", "validation (the holdout, once)"),
    ("checkpoint", "resume snapshot on the training thread"),
    ("epoch", "epoch as `toolkit train` runs it (fit, validation, callbacks)"),
)


@dataclass
class EpochProfile:
    spec: str
    mixed_precision: str
    images: int
    steps: int
    batch_size: int
    seconds: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (wall, CPU)
    load_avg: tuple[float, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "mixed_precision": self.mixed_precision, "images": self.images,
                "steps": self.steps, "batch_size": self.batch_size, "load_avg": self.load_avg,
                "seconds": {k: {"wall": w, "cpu": c} for k, (w, c) in self.seconds.items()}}


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def profile_epoch(spec, *, limit_train: int | None = None, seed: int = 0) -> EpochProfile:
    """Time every category for `spec` (a Spec, its precision resolved) in this process."""
    import dataclasses

    from toolkit.core import data
    from toolkit.core.tf import keras
    from toolkit.training import fitting, inputs, train

    keras.utils.set_random_seed(seed)
    warnings.filterwarnings("ignore", message=".*shuffle=True.*", category=UserWarning)
    dataset = data.load()
    train_ds, val_ds, n_train, _ = inputs.make_datasets(spec, dataset, seed=seed, limit_train=limit_train,
                                                         initial_epoch=0)
    plain = dataclasses.replace(spec, recipe=dataclasses.replace(spec.recipe, crop_padding=0, flip=False,
                                                                    erasing=0.0, augment=False))
    plain_ds = inputs.make_datasets(plain, dataset, seed=seed, limit_train=limit_train, initial_epoch=0)[0]
    steps = int(np.ceil(n_train / spec.batch_size))
    model = train.build_training_model(spec, spec.mixed_precision, steps_per_epoch=steps)
    out = EpochProfile(spec.name, spec.mixed_precision, n_train, steps, spec.batch_size)
    out.seconds.update(time_steps(model, train_ds, plain_ds, val_ds, steps))
    ema = [fitting.EmaSwap()] if spec.recipe.ema else []
    from toolkit.training.checkpoint import Snapshot

    out.seconds["checkpoint"] = _timed(lambda: Snapshot.take(model))
    snapshot = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: Snapshot.take(model))
    out.seconds["epoch"] = _timed(lambda: model.fit(train_ds, validation_data=val_ds, epochs=1,
                                                    steps_per_epoch=steps, verbose=0,
                                                    callbacks=[*ema, snapshot]))
    out.load_avg = tuple(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return out


def time_steps(model, train_ds, plain_ds, val_ds, steps: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of `steps` steps by category, each after a warm-up: the input pipeline
    with and without augmentation, forward+backward, the optimizer, fit, and validation."""
    from toolkit.core.tf import tf

    batches = list(train_ds.take(steps))
    variables = model.trainable_variables

    @tf.function
    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            loss = model.loss(y, model(x, training=True))
            scaled = model.optimizer.scale_loss(loss)
        return tape.gradient(scaled, variables)

    @tf.function
    def apply(grads):
        model.optimizer.apply_gradients(zip(grads, variables, strict=True))

    grads = forward_backward(*batches[0])
    apply(grads)  # traces both and builds the optimizer
    model.fit(train_ds, epochs=1, steps_per_epoch=3, verbose=0)  # traces fit's train function
    model.evaluate(val_ds, verbose=0)
    return {
        "input": _timed(lambda: [None for _ in train_ds.take(steps)]),
        "input_plain": _timed(lambda: [None for _ in plain_ds.take(steps)]),
        "forward_backward": _timed(lambda: [forward_backward(x, y) for x, y in batches]),
        "optimizer": _timed(lambda: [apply(grads) for _ in range(steps)]),
        "fit_train": _timed(lambda: model.fit(train_ds, epochs=1, steps_per_epoch=steps, verbose=0)),
        "validation": _timed(lambda: model.evaluate(val_ds, verbose=0)),
    }
