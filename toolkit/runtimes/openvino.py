"""OpenVINO's CPU plugin: the `openvino` runtime (float32 forced) and `openvino-bf16` (the plugin's
default precision: bfloat16 on CPUs with native bf16), for ONNX files and OpenVINO IR (.xml, its
weights in the .bin beside it).

On CPUs with AMX or AVX512-BF16 the plugin runs float32 models in bfloat16 unless told otherwise
(the compiled model's INFERENCE_PRECISION_HINT reads bf16). Neither runtime hides that: each
states what it computes, read from the compiled model's execution graph (the precision of the
kernels that ran the weighted layers, `computes`), and the instruction sets those kernels use
(`isa`, from each layer's `primitiveType`, e.g. brgconv_avx512_amx_bf16). Every figure runs with
the settings in `SETTINGS` (one stream, the latency hint, `threads` inference threads) and one
synchronous InferRequest.infer per call; the compiled model's own reading of them is recorded.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.contract import INPUT_NAME, OUTPUT_NAME
from toolkit.core.errors import ArtifactError, DeviceUnavailableError
from toolkit.runtimes.base import LoadedModel, OptionalPackage, dtype_name

DISTRIBUTION = "openvino"
INSTALL = "pip install -e '.[openvino]' (a serving host: pip install 'openvino>=2026.4,<2027')"
DEVICE = "CPU"  # the one OpenVINO device the toolkit drives
F32 = "f32"  # INFERENCE_PRECISION_HINT forced by the `openvino` runtime; None: the plugin's default
# What every compiled model is given: one stream and the latency hint (one request at a time, all
# its threads on that request), so a figure is one synchronous call's, like the other runtimes'.
SETTINGS = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
INFERENCE = "synchronous: one InferRequest.infer per call (no async queue)"
# Read back from every compiled model into the records (what the plugin made of the settings).
RECORDED = ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT",
            "EXECUTION_MODE_HINT", "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE")
# The layers whose kernels hold the model's arithmetic: their precision is what the model computes.
WEIGHTED = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")
# OpenVINO element types as the toolkit names precisions, lowest first.
PRECISION_NAMES = {"i8": "int8", "u8": "int8", "bf16": "bf16", "f16": "fp16", "f32": "fp32"}
ORDER = ("int8", "bf16", "fp16", "fp32")
RT_INFO = "fashion_mnist_toolkit"  # the IR's rt_info section the exporter writes (metadata, weights sha)


_PACKAGE = OptionalPackage("openvino", DISTRIBUTION, "openvino", INSTALL)
available, version = _PACKAGE.available, _PACKAGE.version
require = _PACKAGE.require  # the openvino module, or one line naming the package (exit 6)


@functools.cache
def core() -> Any:
    """One ov.Core per process (it holds the plugins; creating one per model costs tens of ms)."""
    return require().Core()


def precision_name(element_type: Any) -> str:
    """'bf16', 'fp32', ... for an OpenVINO element type (or its name)."""
    name = element_type.get_type_name() if hasattr(element_type, "get_type_name") else str(element_type)
    return PRECISION_NAMES.get(name.lower(), name.lower())


def default_precision() -> str:
    """What the CPU plugin computes float models in when not told (bf16 on AMX/AVX512-BF16 CPUs)."""
    return precision_name(core().get_property(DEVICE, "INFERENCE_PRECISION_HINT"))


def bf16_unavailable() -> str:
    """Why the `openvino-bf16` runtime cannot run here, in one line ("" when it can)."""
    if not available():
        return f"openvino is not installed here: {INSTALL}"
    default = default_precision()
    if default == "bf16":
        return ""
    return (f"OpenVINO's CPU plugin computes {default} by default on this CPU (no native bf16: AMX-BF16 or "
            "AVX512-BF16), so its default is the openvino row's float32")


def cpu_name() -> str:
    return str(core().get_property(DEVICE, "FULL_DEVICE_NAME"))


class OpenVinoModel(LoadedModel):
    """An ONNX or IR file compiled by OpenVINO's CPU plugin, at float32 (`hint` F32) or at the
    plugin's default precision (`hint` None: the `openvino-bf16` runtime, refused where that
    default is not bf16)."""

    def __init__(self, path: Path, *, device: str, threads: int | None, hint: str | None) -> None:
        self.runtime = "openvino" if hint == F32 else "openvino-bf16"
        if device != "cpu":
            raise DeviceUnavailableError(
                f"{self.runtime} runs on OpenVINO's CPU plugin only; its GPU and NPU plugins (Intel "
                "devices) are not driven by the toolkit. Use --device cpu")
        require()
        if hint is None and (why := bf16_unavailable()):
            raise DeviceUnavailableError(f"the openvino-bf16 runtime needs a CPU with native bf16: {why}. "
                                         "Use the openvino runtime (float32)")
        self.device, self.threads, self.hint = device, threads, hint
        model = read_model(path)
        config = {**SETTINGS, **({"INFERENCE_NUM_THREADS": threads} if threads else {}),
                  **({"INFERENCE_PRECISION_HINT": hint} if hint else {})}
        try:
            self.compiled = core().compile_model(model, DEVICE, config)
        except Exception as exc:  # the plugin's C++ errors arrive as RuntimeError with many lines
            raise compile_error(path, hint, exc) from None
        self.settings = {name: _plain(self.compiled.get_property(name)) for name in RECORDED}
        self.provider = (f"OpenVINO {version()} {DEVICE} plugin, inference precision "
                         f"{self.settings['INFERENCE_PRECISION_HINT']}, computes {self.computes}")
        self._describe_io()
        self.request = self.compiled.create_infer_request()

    def _describe_io(self) -> None:
        inputs, outputs = self.compiled.inputs, self.compiled.outputs
        self.input_count = len(inputs)
        self.input_name = _name(inputs[0], INPUT_NAME)
        self.input_shape = _shape(inputs[0])
        self.input_dtype = dtype_name(inputs[0].get_element_type().to_dtype())
        self.output_names = tuple(_name(o, OUTPUT_NAME) for o in outputs)
        self.output_shape = _shape(outputs[0])
        self.output_dtype = dtype_name(outputs[0].get_element_type().to_dtype())

    @property
    def computes(self) -> str:  # type: ignore[override]
        """The precision of the kernels chosen for the weighted layers (fixed at compile time)."""
        layers = executed_layers(self.compiled)
        return computed_precision(layers) or precision_name(self.settings["INFERENCE_PRECISION_HINT"])

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)}, share_inputs=True)
        # The output tensor is reused by the next call: hand back a copy.
        return self.request.get_output_tensor(0).data.copy()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "computes": self.computes}

    def run_facts(self) -> dict[str, Any]:
        """Read after the model has run: with a dynamic batch axis the plugin picks some kernels
        (the fully connected ones) at the first call of each shape, and names them only then."""
        layers = executed_layers(self.compiled)
        return {"computes": self.computes, "isa": instruction_sets(layers),
                "primitives": weighted_primitives(layers),
                "openvino": {**self.settings, "inference": INFERENCE, "version": version()}}


def read_model(path: Path) -> Any:
    """The ov.Model of an ONNX or IR file; an IR whose .bin is not the one it was saved with (the
    exporter records the weights' sha256 in the .xml) is refused, like a changed export."""
    try:
        model = core().read_model(str(path))
    except Exception as exc:
        what = "OpenVINO IR model" if path.suffix == ".xml" else "ONNX model OpenVINO can read"
        raise ArtifactError(f"{path}: not an {what} ({_first_line(exc)}). Re-export it (toolkit export "
                            "--force) or restore the file") from None
    if path.suffix == ".xml" and model.has_rt_info([RT_INFO, "weights_sha256"]):
        expected = model.get_rt_info([RT_INFO, "weights_sha256"]).astype(str)
        weights = path.with_suffix(".bin")
        if sha256_of(weights) != expected:
            raise ArtifactError(f"{weights}: not the weights {path.name} was exported with (sha256 differs "
                                f"from the {expected[:12]} it records). Re-export it: toolkit export --force")
    return model


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compile_error(path: Path, hint: str | None, exc: BaseException) -> ArtifactError:
    at = "float32" if hint == F32 else "its default precision"
    text = str(exc)
    reason = ("no kernel implementation fits one of its layers (\"No suitable implementations\")"
              if "No suitable implementations" in text else _first_line(exc))
    fix = ("it compiles with float32 forced (--runtime openvino); for int8 on OpenVINO export "
           "openvino-int8 (toolkit export --format openvino --precision int8)" if hint != F32 else
           "re-export it (toolkit export --force), or run it on ONNX Runtime")
    return ArtifactError(f"{path}: OpenVINO's {DEVICE} plugin cannot compile this file at {at}: {reason}; "
                         f"{fix}")


def _first_line(exc: BaseException) -> str:
    """The line of an OpenVINO error that says what went wrong (its first lines name C++ files)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return ((useful or lines or [type(exc).__name__])[0])[:200]


def _plain(value: Any) -> Any:
    """A compiled-model property as JSON takes it (enums and element types by name)."""
    if isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "get_type_name"):
        return value.get_type_name()
    return getattr(value, "name", str(value))


def _name(port: Any, contract: str) -> str:
    """The port's name: the contract's where the port carries it among its names (OpenVINO folds
    the fp16 file's Cast nodes into its inputs and outputs, whose ports then have both names)."""
    names = port.get_names()
    return contract if contract in names else min(names, default="")


def _shape(port: Any) -> tuple[Any, ...]:
    return tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())


# ---------------------------------------------------------------- what the compiled model runs


def executed_layers(compiled: Any) -> list[dict[str, str]]:
    """Each executed layer of the compiled model's runtime graph: its type, the primitive (kernel)
    that runs it and the precision it runs at (from rt_info; constants and I/O left out)."""
    layers = []
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        fields = {k: info[k].astype(str) for k in ("layerType", "primitiveType", "runtimePrecision")
                  if k in info}
        if fields.get("layerType") not in (None, "Const", "Input", "Output"):
            layers.append(fields)
    return layers


def _kernel_precision(layer: dict[str, str]) -> str:
    """The precision a layer's kernel computes in: the primitive's name ends with it
    (brgconv_avx512_amx_bf16, brgemm_avx512_amx_I8, gemm_mlas_f32); else its runtime precision."""
    suffix = layer.get("primitiveType", "").rsplit("_", 1)[-1].lower()
    return PRECISION_NAMES.get(suffix) or precision_name(layer.get("runtimePrecision", ""))


def computed_precision(layers: list[dict[str, str]]) -> str | None:
    """The precisions the weighted layers' kernels compute in, lowest first and joined by '+'
    where they differ ('int8+fp32': int8 matrix multiplies beside a float32 convolution)."""
    found = {_kernel_precision(layer) for layer in layers if layer.get("layerType") in WEIGHTED}
    ordered = sorted(found, key=lambda p: ORDER.index(p) if p in ORDER else len(ORDER))
    return "+".join(ordered) or None


def weighted_primitives(layers: list[dict[str, str]]) -> dict[str, list[str]]:
    """Layer type -> the kernels that ran its layers (e.g. Convolution: brgconv_avx512_amx_bf16)."""
    out: dict[str, set[str]] = {}
    for layer in layers:
        if layer.get("layerType") in WEIGHTED:
            out.setdefault(layer["layerType"], set()).add(layer.get("primitiveType", "?"))
    return {k: sorted(v) for k, v in sorted(out.items())}


def instruction_sets(layers: list[dict[str, str]]) -> list[str]:
    """The instruction sets the weighted layers' kernels use, from their primitive names: oneDNN's
    JIT kernels name the ISA they were generated for (avx512, amx, avx2); MLAS and reference
    kernels say so instead."""
    found: set[str] = set()
    for layer in layers:
        if layer.get("layerType") not in WEIGHTED:
            continue
        name = layer.get("primitiveType", "").lower()
        precision = _kernel_precision(layer)
        if "amx" in name:
            found.add("AMX-INT8" if precision == "int8" else "AMX-BF16" if precision == "bf16" else "AMX")
        if "avx512" in name:
            found.add("AVX-512")
        if "avx2" in name:
            found.add("AVX2")
        if "sse42" in name:
            found.add("SSE4.2")
        if "mlas" in name:
            found.add("MLAS (ISA chosen at run time)")
        if name.startswith("ref"):
            found.add("reference C++ (no SIMD kernel)")
    return sorted(found)


# ---------------------------------------------------------------- the matrix-multiply peaks


def matmul_request(precision: str, *, n: int, threads: int) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """An infer request of one n x n x n matrix multiply against constant weights (prepacked at
    compile time, as a model's are), its input, and what the plugin runs it with: at float32
    (`fp32`), bfloat16 (`bf16`) or int8 (`int8`: the input through a FakeQuantize and int8
    weights, which the plugin's low-precision transformations run as an int8 GEMM)."""
    ov = require()
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32, name="a")
    if precision == "int8":
        low, high = ops.constant(np.float32(0)), ops.constant(np.float32(1))
        quantized = ops.fake_quantize(a, low, high, low, high, 256)
        weights = ops.constant(rng.integers(-127, 128, size=(n, n), dtype=np.int8))
        product = ops.matmul(quantized, ops.multiply(ops.convert(weights, np.float32),
                                                     ops.constant(np.float32(0.01))), False, False)
        hint = {}
    else:
        product = ops.matmul(a, ops.constant(rng.random((n, n), dtype=np.float32)), False, False)
        hint = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else F32}
    compiled = core().compile_model(ov.Model([product], [a], f"matmul_{precision}"), DEVICE,
                                    {**SETTINGS, "INFERENCE_NUM_THREADS": threads, **hint})
    layers = executed_layers(compiled)
    facts = {"computes": computed_precision(layers), "primitives": weighted_primitives(layers),
             "isa": instruction_sets(layers)}
    return compiled.create_infer_request(), rng.random((n, n), dtype=np.float32), facts
