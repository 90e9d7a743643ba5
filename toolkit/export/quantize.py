"""ONNX precision variants built from the fp32 graph with ONNX Runtime's tools.

- fp16: weights and compute in float16, float32 input/output so the contract holds (for GPUs).
- int8: static QDQ, calibrated (MinMax) on a seeded sample of training images. Per-channel
  weight scales are kept only where they help: both variants are built and the one whose
  top-1 predictions agree more with fp32 on the calibration images wins (ties: lower mean
  absolute difference). Both scores are recorded.
- dynamic: int8 weights for MatMul/Gemm, activations quantized at run time. Conv stays float:
  ONNX Runtime's CPU ConvInteger kernel takes uint8 weights only, and the conv layers hold a
  small share of the weights of these models.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_BATCH = 250


def onnx_fp16(proto) -> tuple[Any, dict[str, Any]]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(proto, keep_io_types=True)
    return half, {"method": "onnxruntime.transformers.float16 (keep_io_types)"}


def onnx_dynamic(proto) -> tuple[Any, dict[str, Any]]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="toolkit-quant-") as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "dynamic.onnx"
        onnx.save(proto, str(src))
        quant_pre_process(src, pre)
        quantize_dynamic(pre, dst, op_types_to_quantize=["MatMul", "Gemm"], per_channel=False,
                         weight_type=QuantType.QInt8)
        out = onnx.load(str(dst))
    return out, {"method": "onnxruntime quantize_dynamic", "weight_type": "int8",
                 "op_types": "MatMul,Gemm"}


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over an array, in fixed batches."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self.input_name = input_name
        self.batches = [images[i:i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)]
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return {self.input_name: self.batches[self.pos - 1]}

    def rewind(self) -> None:
        self.pos = 0


def onnx_int8(proto, calibration: np.ndarray) -> tuple[Any, dict[str, Any]]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = proto.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="toolkit-quant-") as tmp:
        src, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        onnx.save(proto, str(src))
        # Shape inference and fusions first, as ONNX Runtime recommends for static quantization.
        quant_pre_process(src, pre, skip_symbolic_shape=False)
        reference = _run(src, input_name, calibration)
        # Softmax stays float: quantizing the output would round probabilities to 1/255 steps
        # (rows no longer sum to 1) for no speed gain.
        softmax = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Softmax"]
        candidates: dict[bool, dict[str, Any]] = {}
        for per_channel in (True, False):
            dst = Path(tmp) / f"int8-{per_channel}.onnx"
            quantize_static(pre, dst, _Reader(input_name, calibration), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=softmax,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            probs = _run(dst, input_name, calibration)
            candidates[per_channel] = {
                "path": dst,
                "agreement": float(np.mean(probs.argmax(1) == reference.argmax(1))),
                "mean_abs_diff": float(np.mean(np.abs(probs - reference))),
            }
        best = max(candidates, key=lambda k: (candidates[k]["agreement"], -candidates[k]["mean_abs_diff"]))
        out = onnx.load(str(candidates[best]["path"]))
    facts = {
        "method": "onnxruntime quantize_static QDQ, MinMax calibration",
        "activation_type": "int8 (asymmetric)",
        "weight_type": "int8 (symmetric)",
        "per_channel": best,
        "per_channel_choice": {
            ("per_channel" if k else "per_tensor"): {"calibration_agreement": round(v["agreement"], 6),
                                                    "calibration_mean_abs_diff": v["mean_abs_diff"]}
            for k, v in candidates.items()
        },
    }
    return out, facts


def _run(path: Path, input_name: str, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {input_name: images[i:i + 1000]})[0]
                           for i in range(0, len(images), 1000)])
