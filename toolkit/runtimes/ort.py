"""ONNX Runtime, on its CPU execution provider (`onnxruntime`) or CUDA (`onnxruntime-cuda`, never
with a silent CPU fallback), and the one-op sessions the GEMM peaks and the catalog scan use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.errors import DeviceUnavailableError
from toolkit.runtimes.base import LoadedModel, fail_load


def ort_session_options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def constant_op_session(op: str, *, input_name: str, input_type: int, input_shape: list[Any],
                        constants: dict[str, np.ndarray], output_type: int, output_shape: list[Any],
                        threads: int | None):
    """An ONNX Runtime CPU session of one `op` node over one input and constant operands (in the
    node's input order after it), e.g. a MatMulInteger against weights prepacked once at load."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node(op, [input_name, *constants], ["output"])], f"{op}_on_constants",
        [helper.make_tensor_value_info(input_name, input_type, input_shape)],
        [helper.make_tensor_value_info("output", output_type, output_shape)],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), sess_options=ort_session_options(threads),
                                providers=["CPUExecutionProvider"])


class OrtModel(LoadedModel):
    def __init__(self, path: Path, *, device: str, threads: int | None) -> None:
        import onnxruntime as ort

        self.runtime = "onnxruntime-cuda" if device == "gpu" else "onnxruntime"
        self.device, self.threads = device, threads
        options = ort_session_options(threads)
        if device == "gpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeviceUnavailableError(
                    "ONNX Runtime has no CUDA execution provider here "
                    f"(available: {', '.join(ort.get_available_providers())}); "
                    "install the `gpu` extra on a machine with an NVIDIA GPU"
                )
            # A node that cannot run on CUDA must fail the session, not fall back silently.
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            providers = ["CUDAExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=providers)
        except Exception as exc:
            if device == "gpu" and "fallback" in str(exc).lower():
                raise DeviceUnavailableError(
                    f"{path}: some nodes cannot run on CUDA and CPU fallback is disabled ({exc})"
                ) from None
            raise fail_load(path, "ONNX model", exc) from None
        active = self.session.get_providers()
        if device == "gpu" and "CUDAExecutionProvider" not in active:
            raise DeviceUnavailableError(f"{path}: CUDA provider did not load (active: {active})")
        self.provider = active[0]
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_count = len(inputs)
        self.input_name, self.input_shape = inputs[0].name, tuple(inputs[0].shape)
        self.input_dtype = _ORT_TYPES.get(inputs[0].type, inputs[0].type)
        self.output_names = tuple(o.name for o in outputs)
        self.output_dtype = _ORT_TYPES.get(outputs[0].type, outputs[0].type)
        self.output_shape = tuple(outputs[0].shape)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_names[0]], {self.input_name: batch})[0]


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32",
              "tensor(int64)": "int64"}
