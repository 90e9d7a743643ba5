"""What a spec's recipe (toolkit.recipe) means in Keras: optimizer and schedule, loss and targets,
best-epoch selection. Imports TensorFlow: import lazily (toolkit.train does).

The seed's recipe maps to exactly what the toolkit compiled before recipes existed (the
optimizer by name at Keras's default rate, sparse cross-entropy on integer labels), so the seed
specs train bit for bit as before. Anything else is built from stock Keras objects only
(schedules included), so every saved model still loads with plain `keras.saving.load_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import artifacts
from toolkit.core.contract import NUM_CLASSES
from toolkit.core.tf import keras
from toolkit.specs import Spec
from toolkit.specs.recipe import Recipe
from toolkit.training import precision

WARMUP_START = 0.05  # a warm-up starts at this share of the peak rate
NO_DECAY = ("gamma", "beta", "bias")  # BatchNorm scale/offset and biases: weight decay only hurts them
BEST_WEIGHTS, BEST_STATE = "best.npz", "best.json"


# ---------------------------------------------------------------- optimizer, schedule, loss


def _seed_style(recipe: Recipe) -> bool:
    return (recipe.learning_rate is None and recipe.schedule == "constant" and not recipe.weight_decay
            and recipe.optimizer in ("adam", "rmsprop"))


def learning_rate(recipe: Recipe, steps_per_epoch: int):
    """A float, or a stock Keras schedule: cosine to 0 over the run, after an optional linear
    warm-up from 5% of the peak (at most half the run, so a short --epochs run still decays)."""
    peak = recipe.learning_rate_value()
    if recipe.schedule == "constant":
        return peak
    total = steps_per_epoch * recipe.epochs
    warm = min(int(round(recipe.warmup_epochs * steps_per_epoch)), total // 2)
    if not warm:
        return keras.optimizers.schedules.CosineDecay(peak, total, alpha=0.0)
    return keras.optimizers.schedules.CosineDecay(peak * WARMUP_START, total - warm, alpha=0.0,
                                                  warmup_target=peak, warmup_steps=warm)


def make_optimizer(recipe: Recipe, steps_per_epoch: int, mode: str = "off"):
    """The recipe's optimizer; `mode` is the run's mixed-precision mode (toolkit.precision)."""
    if _seed_style(recipe):
        # Keras builds it by name at its defaults, as the seed did (mixed modes: fused Adam).
        return precision.training_optimizer(recipe.optimizer, mode)
    rate = learning_rate(recipe, steps_per_epoch)
    decay = recipe.weight_decay or None
    if recipe.optimizer == "sgd":
        opt = keras.optimizers.SGD(rate, momentum=recipe.momentum, nesterov=recipe.nesterov,
                                   weight_decay=decay)
    elif recipe.optimizer == "adamw":
        opt = keras.optimizers.AdamW(rate, weight_decay=recipe.weight_decay)
    else:
        opt = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}[recipe.optimizer](
            rate, weight_decay=decay)
    if recipe.weight_decay:
        opt.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return opt


def compile_model(model, spec: Spec, steps_per_epoch: int, *, mode: str = "off"):
    # The model outputs probabilities, so the loss must not expect logits (the seed's bug).
    if spec.recipe.dense_targets:
        loss = keras.losses.CategoricalCrossentropy(from_logits=False)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=False)
    optimizer = make_optimizer(spec.recipe, steps_per_epoch, mode)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model


def targets(recipe: Recipe, labels: np.ndarray, teacher_probs: np.ndarray | None = None) -> np.ndarray:
    """Training targets: the integer labels (seed style), or probabilities: one-hot labels with
    label smoothing, blended with the teacher's probabilities when distilling
    (alpha x teacher + (1 - alpha) x smoothed labels)."""
    labels = np.asarray(labels).astype(np.int32)
    if not recipe.dense_targets:
        return labels
    out = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    if recipe.label_smoothing:
        out = out * (1 - recipe.label_smoothing) + recipe.label_smoothing / NUM_CLASSES
    if teacher_probs is not None:
        out = recipe.distill_alpha * teacher_probs.astype(np.float32) + (1 - recipe.distill_alpha) * out
    return out.astype(np.float32)


def eval_targets(recipe: Recipe, labels: np.ndarray) -> np.ndarray:
    """Validation and test targets: the plain labels, in the form the loss takes."""
    labels = np.asarray(labels).astype(np.int32)
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels] if recipe.dense_targets else labels


# ---------------------------------------------------------------- selection


class BestEpoch(keras.callbacks.Callback):
    """selection="best": keeps the weights of the epoch with the highest validation accuracy (the
    seeded holdout; never the test set), also in the resume folder so a resumed run keeps them."""

    def __init__(self, partial: Path, epochs_done: int) -> None:
        super().__init__()
        self.partial = partial
        self.epoch, self.val_accuracy, self.weights = 0, -1.0, None
        state = _read_best(partial)
        if state is not None and state[0] <= epochs_done:
            self.epoch, self.val_accuracy, self.weights = state

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {}).get("val_accuracy", -1.0))
        if value > self.val_accuracy:
            self.epoch, self.val_accuracy = epoch + 1, value
            self.weights = [np.array(w) for w in self.model.get_weights()]
            self.partial.mkdir(parents=True, exist_ok=True)
            with artifacts.atomic_path(self.partial / BEST_WEIGHTS) as tmp:
                np.savez(tmp, *self.weights)
            artifacts.write_json(self.partial / BEST_STATE, {"epoch": self.epoch, "val_accuracy": value})

    def apply(self, model) -> int | None:
        """Put the best epoch's weights into `model`; returns that epoch (None: nothing kept)."""
        if self.weights is None:
            return None
        model.set_weights(self.weights)
        return self.epoch


def _read_best(partial: Path) -> tuple[int, float, list[np.ndarray]] | None:
    try:
        state = artifacts.read_json(partial / BEST_STATE)
        with np.load(partial / BEST_WEIGHTS) as saved:
            weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        return int(state["epoch"]), float(state["val_accuracy"]), weights
    except Exception:
        return None


def selected_figures(history: dict[str, list[float]], epoch: int) -> dict[str, Any]:
    """The train/validation figures of the kept epoch (1-based)."""
    i = epoch - 1
    keys = ("accuracy", "loss", "val_accuracy", "val_loss")
    return {key: history[key][i] for key in keys if key in history}
