"""The training input pipeline: the seeded train/validation split and the tf.data stream of
batches (targets and augmentation from the recipe). Each epoch's order is a stateless shuffle
keyed by (seed, epoch), so a resumed run sees the same batches in its later epochs as an
uninterrupted one would."""

from __future__ import annotations

from typing import Any

import numpy as np

from toolkit.core import data
from toolkit.core.errors import UsageError
from toolkit.specs import Spec

TRAIN_IMAGES = data.FILES["train_images"].dims[0]  # 60,000: every verified dataset has them all


def check_limit_train(limit_train: int | None, *, fraction: float, n_train: int = TRAIN_IMAGES) -> None:
    """A usage error unless 10 <= limit <= the training images left after the validation holdout
    (54,000 of 60,000 at the seed's 10%): a larger limit would silently shrink the holdout."""
    if limit_train is None:
        return
    if limit_train < 10:
        raise UsageError(f"--limit-train {limit_train} is too small; use at least 10 images")
    available = n_train - int(round(n_train * fraction))
    if limit_train > available:
        raise UsageError(
            f"--limit-train {limit_train:,} is more than the {available:,} training images left after the "
            f"{n_train - available:,}-image validation holdout; use at most {available} (or leave it out "
            "to train on all of them)"
        )


def split_indices(n_train: int, *, seed: int, fraction: float,
                  limit_train: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) index split of the training set; a limit shrinks both."""
    check_limit_train(limit_train, fraction=fraction, n_train=n_train)
    order = np.random.default_rng(seed).permutation(n_train)
    n_val = int(round(n_train * fraction))
    if limit_train:
        n_val = max(10, int(round(limit_train * fraction / (1 - fraction))))
    val = order[:n_val]
    train = order[n_val:]
    if limit_train:
        train = train[:limit_train]
    return np.sort(train), np.sort(val)


def make_datasets(spec: Spec, dataset: data.Dataset, *, seed: int, limit_train: int | None,
                   initial_epoch: int, teacher_run: dict[str, Any] | None = None, root=None):
    """Training batches for epochs initial_epoch..epochs-1 as one stream, and validation batches.

    Each epoch's order is a stateless shuffle keyed by (seed, epoch), so a resumed run sees the
    same batches in its later epochs as an uninterrupted one would. Targets and augmentation
    follow the recipe (toolkit.fitting, toolkit.augment).
    """
    from toolkit.core.tf import tf
    from toolkit.training import augment, fitting

    train_idx, val_idx = split_indices(
        len(dataset.y_train), seed=seed, fraction=spec.validation_fraction,
        limit_train=limit_train,
    )
    images = data.to_model_input(dataset.x_train[train_idx])
    teacher_probs = None
    if teacher_run is not None:
        from toolkit.training import distill

        teacher_probs = distill.teacher_probabilities(
            teacher_run, images, temperature=spec.recipe.distill_temperature, root=root)
    x_train = tf.constant(images)
    y_train = tf.constant(fitting.targets(spec.recipe, dataset.y_train[train_idx], teacher_probs))
    x_val = data.to_model_input(dataset.x_train[val_idx])
    y_val = fitting.eval_targets(spec.recipe, dataset.y_train[val_idx])
    n_train = len(train_idx)
    augmenter = augment.batch_augmenter(spec.recipe, seed)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n_train), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(spec.batch_size)
        if augmenter is None:
            return batches.map(lambda idx: (tf.gather(x_train, idx), tf.gather(y_train, idx)))
        return batches.enumerate().map(
            lambda step, idx: (augmenter(tf.gather(x_train, idx), epoch, step), tf.gather(y_train, idx)))

    train_ds = tf.data.Dataset.range(initial_epoch, spec.epochs).flat_map(epoch_batches)
    if spec.augment:
        seed_da = augment.seed_da(seed + 1000 * initial_epoch)
        train_ds = train_ds.map(lambda x, y: (seed_da(x, training=True), y))
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    val_ds = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(1024)
    return train_ds, val_ds, n_train, len(y_val)
