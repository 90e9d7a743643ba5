"""Training-batch augmentation: the seed's "DA" set and the recipes' crop / flip / erasing.

Both run inside the tf.data input pipeline on whole batches and are never part of a saved or
exported model. The recipes' ops are vectorised tf ops with stateless random numbers keyed by
(seed, epoch, step), so a resumed run augments its later epochs exactly as an uninterrupted run.
Imports TensorFlow: import lazily.
"""

from __future__ import annotations

import math

from toolkit.core.contract import IMAGE_SHAPE
from toolkit.core.tf import keras, tf
from toolkit.specs.recipe import Recipe

SIDE = IMAGE_SHAPE[0]
ERASE_AREA = (0.02, 0.25)  # share of the image a random erasing covers (Zhong et al. 2017)
ERASE_RATIO = (0.3, 1 / 0.3)  # aspect ratio range of the erased rectangle


def seed_da(seed: int) -> keras.Sequential:
    """The seed's "DA" specs: random horizontal flip, +-10% translation and +-10% zoom."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
        ],
        name="augmentation",
    )


def random_crop(x, seed, padding: int):
    """Each image shifted by up to `padding` pixels each way, the border zero-filled (pad, then
    crop 28x28 at a random offset), as one gather over the batch."""
    batch = tf.shape(x)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    padded = tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    rows = tf.random.stateless_uniform([batch], seeds[0], 0, 2 * padding + 1, dtype=tf.int32)
    cols = tf.random.stateless_uniform([batch], seeds[1], 0, 2 * padding + 1, dtype=tf.int32)
    span = tf.range(SIDE)
    padded = tf.gather(padded, rows[:, None] + span[None, :], axis=1, batch_dims=1)
    return tf.gather(padded, cols[:, None] + span[None, :], axis=2, batch_dims=1)


def random_flip(x, seed):
    mirror = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], seed) < 0.5
    return tf.where(mirror, tf.reverse(x, axis=[2]), x)


def random_erasing(x, seed, probability: float):
    """With `probability`, one rectangle of each image (2-25% of its area, aspect 0.3-3.3) is
    replaced by uniform noise."""
    batch = tf.shape(x)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    u = tf.random.stateless_uniform([batch, 5], seeds[0])
    area = (ERASE_AREA[0] + u[:, 0] * (ERASE_AREA[1] - ERASE_AREA[0])) * SIDE * SIDE
    log_low, log_high = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    ratio = tf.exp(log_low + u[:, 1] * (log_high - log_low))
    height = tf.clip_by_value(tf.round(tf.sqrt(area * ratio)), 1, SIDE)
    width = tf.clip_by_value(tf.round(tf.sqrt(area / ratio)), 1, SIDE)
    top = tf.floor(u[:, 2] * (SIDE + 1 - height))
    left = tf.floor(u[:, 3] * (SIDE + 1 - width))
    on = tf.cast(u[:, 4] < probability, tf.float32)
    span = tf.range(SIDE, dtype=tf.float32)
    in_rows = _inside(span, top, height)
    in_cols = _inside(span, left, width)
    mask = (in_rows[:, :, None] * in_cols[:, None, :] * on[:, None, None])[..., None]
    noise = tf.random.stateless_uniform(tf.shape(x), seeds[1])
    return x * (1 - mask) + noise * mask


def _inside(span, start, length):
    """[batch, 28] 1.0 where start <= position < start + length."""
    inside = (span[None, :] >= start[:, None]) & (span[None, :] < (start + length)[:, None])
    return tf.cast(inside, tf.float32)


def batch_augmenter(recipe: Recipe, seed: int):
    """fn(images, epoch, step) -> augmented images for the recipe's crop/flip/erasing, or None when
    it uses none of them (the seed's DA set goes through `seed_da`)."""
    if not (recipe.crop_padding or recipe.flip or recipe.erasing):
        return None

    def augment(x, epoch, step):
        key = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64),
                        tf.cast(step, tf.int64)])
        keys = tf.random.experimental.stateless_split(key, 3)
        if recipe.crop_padding:
            x = random_crop(x, keys[0], recipe.crop_padding)
        if recipe.flip:
            x = random_flip(x, keys[1])
        if recipe.erasing:
            x = random_erasing(x, keys[2], recipe.erasing)
        return x

    return augment
