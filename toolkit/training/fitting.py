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


def rate_at(recipe: Recipe, step: int, total: int, steps_per_epoch: int) -> float:
    """The learning rate of step `step` (0-based) of `total` under the linear and onecycle
    schedules: a linear warm-up from 5% of the peak (onecycle: up to the peak over warmup_epochs),
    then a straight line to 0 at the last step."""
    peak = recipe.learning_rate_value()
    warm = min(int(round(recipe.warmup_epochs * steps_per_epoch)), total // 2)
    if step < warm:
        return peak * (WARMUP_START + (1 - WARMUP_START) * step / warm)
    return peak * max(0.0, (total - step) / max(1, total - warm))


def learning_rate(recipe: Recipe, steps_per_epoch: int):
    """A float, or a stock Keras schedule: cosine to 0 over the run, after an optional linear
    warm-up from 5% of the peak (at most half the run, so a short --epochs run still decays).
    The linear and onecycle schedules start from a float that StepRate sets at every step (a plain
    float rate keeps the saved optimizer loadable by stock Keras)."""
    peak = recipe.learning_rate_value()
    if recipe.schedule == "constant":
        return peak
    if recipe.schedule in ("linear", "onecycle"):
        return rate_at(recipe, 0, steps_per_epoch * recipe.epochs, steps_per_epoch)
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
    # The moving average lives in the optimizer (updated inside the compiled step, saved with the
    # resume state); EmaSwap validates with it, and training ends by swapping it in.
    ema = {"use_ema": True, "ema_momentum": recipe.ema} if recipe.ema else {}
    if recipe.optimizer == "sgd":
        opt = keras.optimizers.SGD(rate, momentum=recipe.momentum, nesterov=recipe.nesterov,
                                   weight_decay=decay, **ema)
    elif recipe.optimizer == "adamw":
        opt = keras.optimizers.AdamW(rate, weight_decay=recipe.weight_decay, **ema)
    else:
        opt = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}[recipe.optimizer](
            rate, weight_decay=decay, **ema)
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


class StepRate(keras.callbacks.Callback):
    """The linear and onecycle schedules: sets the optimizer's rate before every step."""

    def __init__(self, recipe: Recipe, steps_per_epoch: int) -> None:
        super().__init__()
        self.recipe, self.steps = recipe, steps_per_epoch
        self.total = steps_per_epoch * recipe.epochs
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        step = self.epoch * self.steps + batch
        self.model.optimizer.learning_rate.assign(rate_at(self.recipe, step, self.total, self.steps))


class EmaSwap(keras.callbacks.Callback):
    """recipe.ema: validation runs on the moving average of the weights (swapped in for it and
    back after), so the kept epoch and the saved model are chosen by what they will be."""

    def _pairs(self):
        opt = self.model.optimizer
        return list(zip(opt._trainable_variables, opt._model_variables_moving_average, strict=True))

    def swap(self) -> None:
        for variable, average in self._pairs():
            kept = keras.ops.copy(variable.value)
            variable.assign(average)
            average.assign(kept)

    def on_test_begin(self, logs=None):
        self.swap()

    def on_test_end(self, logs=None):
        self.swap()


def apply_levers(model, spec: Spec, images: np.ndarray | None = None) -> None:
    """The recipe's model-side levers on a freshly built model: BatchNorm momentum, and the
    whitened first convolution (from `images`, training images in [0, 1])."""
    recipe = spec.recipe
    if recipe.bn_momentum is not None:
        for layer in _layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = recipe.bn_momentum
    if recipe.whiten_stem and images is not None:
        stem = next(layer for layer in _layers(model) if isinstance(layer, keras.layers.Conv2D))
        kernel = stem.kernel.numpy()
        stem.kernel.assign(whitening_kernel(images, kernel))


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def whitening_kernel(images: np.ndarray, kernel: np.ndarray, *, patches: int = 20_000, eps: float = 1e-2,
                     seed: int = 0) -> np.ndarray:
    """`kernel` (kh, kw, 1, out) with its first filters replaced by patch-whitening filters: the
    eigenvectors of the k x k patch covariance of `images`, scaled by 1/sqrt(eigenvalue + eps),
    each with its negative (so a ReLU keeps both signs): airbench's data-derived first layer."""
    kh, kw, channels, out = kernel.shape
    rng = np.random.default_rng(seed)
    x = np.asarray(images, dtype=np.float64).reshape(len(images), images.shape[1], images.shape[2], -1)
    n, h, w, _ = x.shape
    rows, cols = rng.integers(0, h - kh + 1, patches), rng.integers(0, w - kw + 1, patches)
    vectors = np.stack([x[i, r:r + kh, c:c + kw, :].ravel()
                        for i, r, c in zip(rng.integers(0, n, patches), rows, cols, strict=True)])
    vectors -= vectors.mean(axis=0)
    values, eigvecs = np.linalg.eigh(np.cov(vectors, rowvar=False))
    order = np.argsort(values)[::-1]
    filters = eigvecs[:, order] / np.sqrt(values[order] + eps)
    filters = np.concatenate([filters, -filters], axis=1)[:, :out]
    new = kernel.copy()
    new[..., : filters.shape[1]] = filters.reshape(kh, kw, channels, -1).astype(kernel.dtype)
    return new


# ---------------------------------------------------------------- selection


class BestEpoch(keras.callbacks.Callback):
    """selection="best": keeps the weights of the epoch with the highest validation accuracy (the
    seeded holdout; never the test set), also in the resume folder so a resumed run keeps them."""

    def __init__(self, partial: Path, epochs_done: int, ema: EmaSwap | None = None) -> None:
        super().__init__()
        self.partial, self.ema = partial, ema
        self.epoch, self.val_accuracy, self.weights = 0, -1.0, None
        state = _read_best(partial)
        if state is not None and state[0] <= epochs_done:
            self.epoch, self.val_accuracy, self.weights = state

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {}).get("val_accuracy", -1.0))
        if value > self.val_accuracy:
            self.epoch, self.val_accuracy = epoch + 1, value
            self.weights = self._validated_weights()
            self.partial.mkdir(parents=True, exist_ok=True)
            with artifacts.atomic_path(self.partial / BEST_WEIGHTS) as tmp:
                np.savez(tmp, *self.weights)
            artifacts.write_json(self.partial / BEST_STATE, {"epoch": self.epoch, "val_accuracy": value})

    def _validated_weights(self) -> list[np.ndarray]:
        """The weights validation measured: the moving average's, with EMA."""
        if self.ema is not None:
            self.ema.swap()
        try:
            return [np.array(w) for w in self.model.get_weights()]
        finally:
            if self.ema is not None:
                self.ema.swap()

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
