"""Flip test-time augmentation as an export of its own, never hidden inside another: a graph that
runs the model on the image and on its mirror image and averages the two probability vectors.

    onnx-tta         model.fp32.tta.onnx       (ONNX Runtime)
    tflite-int8-tta  model.int8.tta.tflite     (LiteRT; full integer, float32 input/output)

It keeps the model contract (float32 [N,28,28,1] in [0,1] -> probabilities [N,10]), so every
runtime, parity, the benchmarks and the report take it by key like any export; it computes the
model twice per image, and its benchmark rows show what that costs. Its parity reference is the
Keras model under the same averaging (toolkit.export.parity_rows), not the plain Keras model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.contract import INPUT_NAME, OUTPUT_NAME


def with_flip(model):
    """The Keras model averaged over the image and its left-right mirror (a new functional model
    sharing `model`'s layers and weights)."""
    from toolkit.core.tf import keras

    image = keras.Input(shape=model.input_shape[1:], name=INPUT_NAME)
    mirrored = keras.layers.Lambda(lambda x: keras.ops.flip(x, axis=2), name="mirror")(image)
    averaged = keras.layers.Average(name=OUTPUT_NAME)([model(image), model(mirrored)])
    return keras.Model(image, averaged, name=f"{model.name}_flip_tta")


def mirror(images: np.ndarray) -> np.ndarray:
    """Images [N, H, W, C] flipped left-right, as the TTA graph flips them."""
    return np.ascontiguousarray(np.asarray(images)[:, :, ::-1, :])


def export(model, path: str | Path, *, precision: str = "fp32", calibration: np.ndarray | None = None,
           opset: int | None = None, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """The TTA graph of `model`, written by the ONNX or TFLite exporter (by the path's suffix)."""
    from toolkit.export import onnx, tflite

    exporter = onnx.export if Path(path).suffix == ".onnx" else tflite.export
    meta = {**(metadata or {}), "test_time_augmentation": "mean of image and left-right mirror"}
    facts = exporter(with_flip(model), path, precision=precision, calibration=calibration, opset=opset,
                     metadata=meta)
    return {**facts, "test_time_augmentation": "flip: mean of the image's and its mirror's probabilities"}
