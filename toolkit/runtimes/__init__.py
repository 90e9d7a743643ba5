"""Runtimes: one small interface to run a model file, whatever produced it.

    model = runtimes.load(path, runtime="onnxruntime", device="cpu", threads=2)
    probabilities = model.run(batch)        # float32 [N,28,28,1] in [0,1] -> [N,10]

`table` holds RUNTIMES (key, file suffixes, devices, loader), one module per runtime (`keras`,
`ort`, `litert`, `tflm`, `openvino`) behind `base.LoadedModel`; `predict` classifies image files
(converted by toolkit.core.images). Loaders import their library lazily: ONNX Runtime, LiteRT
and OpenVINO paths never import TensorFlow.
"""

from toolkit.runtimes.base import LoadedModel, check_output, contract_error
from toolkit.runtimes.ort import constant_op_session, ort_session_options
from toolkit.runtimes.table import (
    DEVICES,
    KERAS_KEYS,
    RUNTIMES,
    Runtime,
    default_runtime,
    get_runtime,
    load,
    runtimes_for,
)

__all__ = ["DEVICES", "KERAS_KEYS", "RUNTIMES", "LoadedModel", "Runtime", "check_output",
           "constant_op_session", "contract_error", "default_runtime", "get_runtime", "load",
           "ort_session_options", "runtimes_for"]
