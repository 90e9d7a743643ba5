"""Build Keras models from specs. Imports Keras: import this module lazily.

Every model keeps the contract (toolkit.contract): input `image` float32 [N,28,28,1] in [0,1];
output `probabilities` [N,10] (softmax). The last hidden dense layer is named `embedding`: its
activations are the penultimate-layer features used by analyses and the recommender. Only stock
layers are used, so `keras.saving.load_model` needs no custom objects.
"""

from __future__ import annotations

from toolkit._tf import keras
from toolkit.contract import EMBEDDING_LAYER, IMAGE_SHAPE, INPUT_NAME, NUM_CLASSES, OUTPUT_NAME
from toolkit.specs import Spec


def build_model(spec: Spec) -> keras.Model:
    inputs = keras.Input(shape=IMAGE_SHAPE, name=INPUT_NAME, dtype="float32")
    x = inputs
    for i, filters in enumerate(spec.conv_filters, start=1):
        x = keras.layers.Conv2D(
            filters, spec.kernel_size, strides=spec.conv_strides, activation="relu",
            name=f"conv_{i}",
        )(x)
        x = keras.layers.MaxPooling2D(
            spec.pool_size, strides=spec.pool_strides, name=f"pool_{i}"
        )(x)
    x = keras.layers.Flatten(name="flatten")(x)
    last = len(spec.dense_units)
    for i, (units, rate, l2) in enumerate(zip(spec.dense_units, spec.dropout, spec.l2, strict=True), start=1):
        x = keras.layers.Dense(
            units,
            activation="relu",
            kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
            name=EMBEDDING_LAYER if i == last else f"dense_{i}",
        )(x)
        if rate:
            x = keras.layers.Dropout(rate, name=f"dropout_{i}")(x)
    # float32 under every mixed-precision policy: the softmax and the loss need its range.
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name=OUTPUT_NAME, dtype="float32")(x)
    return keras.Model(inputs, outputs, name=spec.name)


def compile_model(model: keras.Model, spec: Spec, *, optimizer=None) -> keras.Model:
    """`optimizer`: an instance to train with instead of the spec's by name (mixed precision's
    fused Adam, toolkit.precision.training_optimizer)."""
    # The model outputs probabilities, so the loss must not expect logits (the seed's bug).
    model.compile(
        optimizer=optimizer or spec.optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
        metrics=["accuracy"],
    )
    return model


def embedding_model(model: keras.Model) -> keras.Model:
    """A model sharing `model`'s weights: image -> penultimate-layer activations."""
    return keras.Model(model.inputs, model.get_layer(EMBEDDING_LAYER).output,
                       name=f"{model.name}_embedding")


def augmentation(seed: int) -> keras.Sequential:
    """Training-only augmentation for the seed's "DA" specs; never part of an exported model."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
        ],
        name="augmentation",
    )


def load_model(path, *, what: str = "model"):
    """Load a `.keras` file in safe mode; problems become an ArtifactError naming the file."""
    from pathlib import Path

    from toolkit.errors import ArtifactError

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: {what} not found. Train it first with `toolkit train`")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad zip/config
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ArtifactError(
            f"{path}: not a loadable Keras model ({reason}). "
            "Retrain it (toolkit train --exp NAME) or restore the file"
        ) from None
