"""Pieces every exporter shares: the traced serving function, versions, calibration data.

Every exporter module exposes the same signature:

    export(model, path, *, precision, calibration, opset, metadata) -> dict

`model` is a built Keras model (trained or not), `path` the file to write (atomically),
`calibration` a float32 [N,28,28,1] sample in [0,1] (needed by int8 only), `metadata` the
string pairs to embed or record. It returns facts worth recording in exports.json.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from toolkit import __version__
from toolkit.core.contract import CLASS_NAMES, INPUT_NAME, OUTPUT_NAME, PREPROCESSING
from toolkit.core.errors import UsageError
from toolkit.core.machine import package_versions
from toolkit.core.quiet import quiet_stderr

DEFAULT_CALIBRATION_SIZE = 1000
DEFAULT_CALIBRATION_SEED = 0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence converter chatter (C++ logs on fd 2, Python warnings on the root logger) unless
    TOOLKIT_VERBOSE is set: exporters report through exports.json and the CLI's table."""
    if os.environ.get("TOOLKIT_VERBOSE"):
        yield
        return
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with quiet_stderr():
            yield
    finally:
        root.setLevel(level)


def version_of(package: str) -> str:
    """One distribution's version from toolkit.contract.package_versions ("tensorflow" is
    whichever of tensorflow/tensorflow-cpu is installed), or "not installed"."""
    return package_versions((package,)).get(package, "not installed")


def base_metadata(spec_name: str, source_sha256: str | None, *,
                  preprocessing: str = PREPROCESSING) -> dict[str, str]:
    """What every exported file carries: which model, which classes, which preprocessing (the
    format's own I/O description, for a variant whose contract differs)."""
    meta = {
        "spec_name": spec_name,
        "class_names": ",".join(CLASS_NAMES),
        "preprocessing": preprocessing,
        "toolkit_version": __version__,
    }
    if source_sha256:
        meta["source_model_sha256"] = source_sha256
    return meta


def serving_function(model, *, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME):
    """A tf.function with a dynamic batch axis and the contract's names, for any Keras model."""
    from toolkit.core.tf import tf

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UsageError(f"model {model.name!r} must have one input and one output to export, "
                         f"has {len(model.inputs)} and {len(model.outputs)}")
    shape = [None, *list(model.inputs[0].shape)[1:]]
    spec = tf.TensorSpec(shape, tf.float32, name=input_name)

    @tf.function(input_signature=[spec])
    def serve(x):
        return {output_name: model(x, training=False)}

    return serve


def require_calibration(calibration: np.ndarray | None, what: str) -> np.ndarray:
    if calibration is None or len(calibration) == 0:
        raise UsageError(f"{what} needs calibration images (float32 [N,28,28,1] in [0,1]); none given")
    return np.ascontiguousarray(calibration, dtype=np.float32)


def calibration_sample(x_train_uint8: np.ndarray, *, size: int = DEFAULT_CALIBRATION_SIZE,
                       seed: int = DEFAULT_CALIBRATION_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of training images in the model contract, and their indices."""
    from toolkit.core.data import to_model_input

    size = min(size, len(x_train_uint8))
    idx = np.sort(np.random.default_rng(seed).choice(len(x_train_uint8), size=size, replace=False))
    return to_model_input(x_train_uint8[idx]), idx


def info(**facts: Any) -> dict[str, Any]:
    return {k: v for k, v in facts.items() if v is not None}
