"""Keras -> TFLite through the TFLite converter, in four precisions; run with ai-edge-litert.

Keras 3 variables survive `from_saved_model`/`from_concrete_functions` as resource variables
(READ_VARIABLE ops, which break int8 calibration), so the traced function is frozen first and
re-wrapped in a tf.function that returns {"probabilities": ...}: the file keeps a
`serving_default` signature with the contract's input and output names.

Precisions: fp32; `dynamic` (dynamic-range: int8 weights, float activations); `fp16` (float16
weights); `int8` (full integer, calibrated on a representative dataset, with float32 input and
output so the contract holds); `int8io` (the same full-integer model with int8 input and output,
the TFLite Micro convention: the one documented exception to the float32 contract, its input and
output scale/zero-point in its metadata). TFLite has no metadata_props, so the metadata is
written beside the file as `<file>.json` and into exports.json. Every variant also records its
tensor arena (toolkit.runtimes.tflite_info), the activation memory a microcontroller would need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.artifacts import write_bytes, write_json
from toolkit.core.contract import PRECISIONS
from toolkit.core.errors import UsageError
from toolkit.export._common import OUTPUT_NAME, info, require_calibration, serving_function, version_of
from toolkit.runtimes import tflite_info

CALIBRATION_BATCH = 50


def metadata_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def converter_metadata() -> dict[str, str]:
    return {"converter": f"tf.lite.TFLiteConverter (tensorflow {version_of('tensorflow')})",
            "keras_version": version_of("keras"), "runtime": f"ai-edge-litert {version_of('ai-edge-litert')}"}


def to_tflite(model, *, precision: str = "fp32", calibration: np.ndarray | None = None) -> bytes:
    """The TFLite flatbuffer of a Keras model at a precision (not written)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from toolkit.core.tf import tf

    if precision not in PRECISIONS:
        raise UsageError(f"TFLite precision {precision!r} is not supported; valid: {', '.join(PRECISIONS)}")
    serve = serving_function(model)
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())

    @tf.function(input_signature=serve.input_signature)
    def serving_default(image):
        return {OUTPUT_NAME: frozen(image)[0]}

    holder = tf.Module()
    holder.serving_default = serving_default
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serving_default.get_concrete_function()], holder)
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif precision in ("int8", "int8io"):
        images = require_calibration(calibration, f"TFLite {precision}")

        def representative():
            for start in range(0, len(images), CALIBRATION_BATCH):
                yield [images[start:start + CALIBRATION_BATCH]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # int8: quantize/dequantize at the edges, callers keep feeding float32 images in [0,1];
        # int8io: the caller quantizes (the file's metadata says how), as on a microcontroller.
        edge = tf.int8 if precision == "int8io" else tf.float32
        converter.inference_input_type = edge
        converter.inference_output_type = edge
    return converter.convert()


def export(model, path: str | Path, *, precision: str = "fp32", calibration: np.ndarray | None = None,
           opset: int | None = None, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """The exporter signature shared by export/*; `opset` does not apply to TFLite."""
    path = Path(path)
    flatbuffer = to_tflite(model, precision=precision, calibration=calibration)
    facts = tflite_info.read(flatbuffer)
    meta = {**converter_metadata(), **(metadata or {}), "precision": precision,
            "arena_bytes": facts.arena_bytes}
    io = {}
    if precision == "int8io":
        if facts.input_quantization is None or facts.output_quantization is None:
            raise RuntimeError("the converter did not produce int8 input and output quantization")
        io = {"input": facts.input_quantization.to_dict(), "output": facts.output_quantization.to_dict()}
        meta["io_quantization"] = io
    method = {
        "fp32": "float32",
        "dynamic": "dynamic-range (Optimize.DEFAULT, int8 weights)",
        "fp16": "float16 weights (Optimize.DEFAULT, supported_types=float16)",
        "int8": "full integer (TFLITE_BUILTINS_INT8, representative dataset), float32 input/output",
        "int8io": "full integer (TFLITE_BUILTINS_INT8, representative dataset), int8 input/output",
    }[precision]
    # The sidecar first: a .tflite without its metadata is worse than metadata without a file.
    write_json(metadata_path(path), meta)
    write_bytes(path, flatbuffer)
    return info(converter=meta["converter"], method=method, metadata=meta,
                metadata_file=metadata_path(path).name, arena_bytes=facts.arena_bytes,
                arena_peak_op=facts.arena_peak_op, io_quantization=io or None)
