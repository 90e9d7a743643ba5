"""LiteRT (ai-edge-litert's interpreter with XNNPACK) for .tflite files, including the int8-I/O
microcontroller build, whose `run` quantizes images and dequantizes probabilities with the
file's own scale and zero point."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.core.contract import INPUT_NAME, OUTPUT_NAME
from toolkit.core.errors import DeviceUnavailableError
from toolkit.core.quiet import quiet_stderr
from toolkit.runtimes.base import TfliteIOModel, dtype_name, fail_load, int_quantization


class LiteRTModel(TfliteIOModel):
    """A .tflite file on ai-edge-litert's interpreter (XNNPACK delegate by default)."""

    def __init__(self, path: Path, *, device: str, threads: int | None) -> None:
        if device != "cpu":
            raise DeviceUnavailableError("LiteRT runs on CPU here; no GPU delegate is configured")
        from ai_edge_litert import interpreter as litert

        try:
            with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on every load
                self.interpreter = litert.Interpreter(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()
        except Exception as exc:
            raise fail_load(path, "TFLite model", exc) from None
        self.runtime, self.device, self.threads = "litert", device, threads
        self.provider = "LiteRT XNNPACK"
        try:
            names = _signature_names(self.interpreter)
            details = self.interpreter.get_input_details()[0]
            outputs = self.interpreter.get_output_details()
        except Exception as exc:
            raise fail_load(path, "TFLite model", exc) from None
        self._input_index = details["index"]
        self.input_count = len(self.interpreter.get_input_details())
        self.input_shape = tuple(int(d) for d in details["shape_signature"])
        self.input_dtype = dtype_name(details["dtype"])
        self.input_name = names.get(details["index"], _tflite_name(details["name"], INPUT_NAME))
        names_out = [names.get(o["index"], _tflite_name(o["name"], OUTPUT_NAME)) for o in outputs]
        # The contract's output if the signature names it, else the first; listed first.
        first = names_out.index(OUTPUT_NAME) if OUTPUT_NAME in names_out else 0
        self.output_names = tuple([names_out[first], *(n for i, n in enumerate(names_out) if i != first)])
        self._output_index = outputs[first]["index"]
        self.output_shape = tuple(int(d) for d in outputs[first]["shape_signature"])
        self.output_dtype = dtype_name(outputs[first]["dtype"])
        self._batch = -1
        # An int8 input/output with a scale is quantized I/O: its parameters are in the file.
        self.input_quant = int_quantization(details)
        self.output_quant = int_quantization(outputs[first])
        self.quantized_io = self.input_quant is not None and self.output_quant is not None

    def run_encoded(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) != self._batch:
            self.interpreter.resize_tensor_input(self._input_index, list(batch.shape), strict=False)
            with quiet_stderr():
                self.interpreter.allocate_tensors()
            self._batch = len(batch)
        self.interpreter.set_tensor(self._input_index, batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output_index).copy()


def _signature_names(interpreter) -> dict[int, str]:
    """Tensor index -> name from the file's one signature (tensor names are the converter's,
    e.g. "PartitionedCall:0"; the signature keeps the names the exporter chose)."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return {}
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    names = {d["index"]: n for n, d in runner.get_input_details().items()}
    names.update({d["index"]: n for n, d in runner.get_output_details().items()})
    return names


def _tflite_name(raw: str, contract: str) -> str:
    # The converter prefixes signature names ("serving_default_image:0"); keep the contract's.
    return contract if contract in raw else raw
