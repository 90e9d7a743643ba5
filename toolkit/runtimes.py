"""One small interface to run a model file, whatever produced it.

    model = runtimes.load(path, runtime="onnxruntime", device="cpu", threads=2)
    probabilities = model.run(batch)        # float32 [N,28,28,1] in [0,1] -> [N,10]
    model.provider                          # what actually executed, e.g. CPUExecutionProvider

`load` checks the file's declared input and output (name, dtype, rank, shape) against the model
contract (toolkit.contract.CLASSIFIER unless told otherwise): a file that differs is a
ContractError (an ArtifactError, exit 4) naming the file, what it has and what is expected,
before anything runs on it. The one exception is a file with int8 input and output
(tflite-int8io, toolkit.contract.INT8_CLASSIFIER): its `run` quantizes the float images and
dequantizes the output with the scale and zero point stored in the file, so callers still pass
float32 images and get float32 probabilities.

RUNTIMES is the one table of runtimes (key, file suffixes, device, loader). Parity, benchmarks,
`toolkit predict` and the recommender all go through it, always by key. Loaders import their
library lazily, so ONNX Runtime and LiteRT paths never import TensorFlow.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.contract import CLASSIFIER, INPUT_NAME, INT8_CLASSIFIER, OUTPUT_NAME, IOContract
from toolkit.errors import ArtifactError, ContractError, DeviceUnavailableError, UsageError
from toolkit.quiet import quiet_stderr

DEVICES = ("cpu", "gpu")
KERAS_KEYS = ("keras", "keras-predict")


class LoadedModel:
    """A model ready to run. Subclasses fill in what the file declares about its first input and
    the output `run` returns (shapes as declared: the batch axis symbolic, None or -1)."""

    runtime: str = ""
    provider: str = ""
    device: str = "cpu"
    threads: int | None = None
    input_count: int = 1
    input_name: str = INPUT_NAME
    input_dtype: str | None = None
    input_shape: tuple[Any, ...] | None = None
    output_names: tuple[str, ...] = (OUTPUT_NAME,)
    output_dtype: str | None = None
    output_shape: tuple[Any, ...] | None = None  # of the output `run` returns

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The contract's output for a batch in the contract's input format."""
        raise NotImplementedError

    # A file with int8 input and output (tflite-int8io) takes quantized images and returns
    # quantized probabilities; `run` wraps both conversions. The benchmarks time `run_encoded` on
    # inputs encoded beforehand, as a microcontroller is fed int8 images. For every other file
    # the three are the identity and `run`.
    quantized_io: bool = False

    def encode(self, batch: np.ndarray) -> np.ndarray:
        return batch

    def run_encoded(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)

    def decode(self, output: np.ndarray) -> np.ndarray:
        return output

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "provider": self.provider, "device": self.device,
                "threads": self.threads}

    def mismatches(self, contract: IOContract) -> list[str]:
        """How the file's declared input/output differ from `contract` (empty: they match)."""
        problems = [] if self.input_count == 1 else [f"{self.input_count} inputs, expected 1"]
        return problems + contract.mismatches(
            input_name=self.input_name, input_dtype=self.input_dtype, input_shape=self.input_shape,
            output_name=self.output_names[0] if self.output_names else None,
            output_dtype=self.output_dtype, output_shape=self.output_shape)


def contract_error(path: Path, problems: list[str]) -> ContractError:
    return ContractError(
        f"{path}: does not match the model contract: {'; '.join(problems)}. Use a model trained and "
        "exported by this toolkit (toolkit export --force re-exports one)"
    )


def check_output(path: str | Path, output: np.ndarray, *, batch: int,
                 contract: IOContract = CLASSIFIER) -> None:
    """A computed output against the contract (the declared shape may leave axes open)."""
    expected = (batch, *contract.output.shape[1:])
    shape = tuple(np.shape(output))
    if len(shape) != len(expected) or any(isinstance(e, int) and d != e for d, e in zip(shape, expected,
                                                                                      strict=True)):
        raise contract_error(Path(path), [f"output shape {list(shape)} for a batch of {batch}, expected "
                                          f"{contract.output.describe()}"])


def _fail_load(path: Path, what: str, exc: BaseException) -> ArtifactError:
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return ArtifactError(
        f"{path}: not a loadable {what} ({reason}). Re-export it (toolkit export --force) "
        "or restore the file"
    )


# ---------------------------------------------------------------- Keras


class KerasModel(LoadedModel):
    """model.keras run as a compiled function (`compiled`) or through `model.predict`."""

    def __init__(self, path: Path, *, predict: bool, device: str, threads: int | None) -> None:
        from toolkit._tf import tf
        from toolkit.models import load_model

        if device != "cpu":
            raise DeviceUnavailableError(
                "the Keras runtime runs on CPU here (tensorflow-cpu); use onnxruntime-cuda for GPU"
            )
        self.model = load_model(path)
        self.runtime = "keras-predict" if predict else "keras"
        self.provider = f"tensorflow {tf.__version__} CPU"
        self.device, self.threads = device, threads
        inp, out = self.model.inputs[0], self.model.outputs[0]
        self.input_count = len(self.model.inputs)
        self.input_name, self.input_dtype, self.input_shape = inp.name, _dtype(inp.dtype), tuple(inp.shape)
        self.output_names = tuple(self.model.output_names)
        self.output_dtype, self.output_shape = _dtype(out.dtype), tuple(out.shape)
        self._predict = predict
        self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._predict:
            return self.model.predict(batch, batch_size=max(1, min(len(batch), 1024)), verbose=0)
        return self._call(batch).numpy()


# ---------------------------------------------------------------- ONNX Runtime


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
            raise _fail_load(path, "ONNX model", exc) from None
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


def _dtype(value: Any) -> str:
    try:
        return np.dtype(value).name
    except TypeError:
        return str(value)


# ---------------------------------------------------------------- LiteRT


class LiteRTModel(LoadedModel):
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
            raise _fail_load(path, "TFLite model", exc) from None
        self.runtime, self.device, self.threads = "litert", device, threads
        self.provider = "LiteRT XNNPACK"
        try:
            names = _signature_names(self.interpreter)
            details = self.interpreter.get_input_details()[0]
            outputs = self.interpreter.get_output_details()
        except Exception as exc:
            raise _fail_load(path, "TFLite model", exc) from None
        self._input_index = details["index"]
        self.input_count = len(self.interpreter.get_input_details())
        self.input_shape = tuple(int(d) for d in details["shape_signature"])
        self.input_dtype = _dtype(details["dtype"])
        self.input_name = names.get(details["index"], _tflite_name(details["name"], INPUT_NAME))
        names_out = [names.get(o["index"], _tflite_name(o["name"], OUTPUT_NAME)) for o in outputs]
        # The contract's output if the signature names it, else the first; listed first.
        first = names_out.index(OUTPUT_NAME) if OUTPUT_NAME in names_out else 0
        self.output_names = tuple([names_out[first], *(n for i, n in enumerate(names_out) if i != first)])
        self._output_index = outputs[first]["index"]
        self.output_shape = tuple(int(d) for d in outputs[first]["shape_signature"])
        self.output_dtype = _dtype(outputs[first]["dtype"])
        self._batch = -1
        # An int8 input/output with a scale is quantized I/O: its parameters are in the file.
        self.input_quant = _int_quantization(details)
        self.output_quant = _int_quantization(outputs[first])
        self.quantized_io = self.input_quant is not None and self.output_quant is not None

    def encode(self, batch: np.ndarray) -> np.ndarray:
        if self.input_quant is None:
            return batch
        (scale, zero_point), info = self.input_quant, np.iinfo(self.input_dtype)
        q = np.round(np.asarray(batch, dtype=np.float32) / scale) + zero_point
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def decode(self, output: np.ndarray) -> np.ndarray:
        if self.output_quant is None:
            return output
        scale, zero_point = self.output_quant
        return ((output.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.decode(self.run_encoded(self.encode(batch)))

    def run_encoded(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) != self._batch:
            self.interpreter.resize_tensor_input(self._input_index, list(batch.shape), strict=False)
            with quiet_stderr():
                self.interpreter.allocate_tensors()
            self._batch = len(batch)
        self.interpreter.set_tensor(self._input_index, batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output_index).copy()


def _int_quantization(details: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero point) of an int8/uint8 tensor that has them, else None (a float tensor)."""
    scale, zero_point = details.get("quantization") or (0.0, 0)
    if np.dtype(details["dtype"]).kind not in "iu" or not scale:
        return None
    return float(scale), int(zero_point)


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


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Runtime:
    key: str
    suffixes: tuple[str, ...]
    devices: tuple[str, ...]
    module: str  # imported to check availability, without loading a model
    loader: Callable[..., LoadedModel] = field(repr=False)
    description: str = ""
    # What loading a model imports, importable ahead of it (the "runtime imported, no model"
    # baseline of the memory benchmark).
    preload: tuple[str, ...] = ()

    def available(self) -> bool:
        try:
            importlib.import_module(self.module)
        except ImportError:
            return False
        if self.key == "onnxruntime-cuda":
            import onnxruntime as ort

            return "CUDAExecutionProvider" in ort.get_available_providers()
        return True


RUNTIMES: dict[str, Runtime] = {
    r.key: r
    for r in (
        Runtime("keras", (".keras",), ("cpu",), "tensorflow",
                lambda p, device, threads: KerasModel(p, predict=False, device=device,
                                                      threads=threads),
                "Keras model called as a compiled tf.function", ("toolkit._tf", "toolkit.models")),
        Runtime("keras-predict", (".keras",), ("cpu",), "tensorflow",
                lambda p, device, threads: KerasModel(p, predict=True, device=device,
                                                      threads=threads),
                "Keras model.predict, as users call it", ("toolkit._tf", "toolkit.models")),
        Runtime("onnxruntime", (".onnx",), ("cpu",), "onnxruntime",
                lambda p, device, threads: OrtModel(p, device="cpu", threads=threads),
                "ONNX Runtime, CPU execution provider", ("onnxruntime",)),
        Runtime("onnxruntime-cuda", (".onnx",), ("gpu",), "onnxruntime",
                lambda p, device, threads: OrtModel(p, device="gpu", threads=threads),
                "ONNX Runtime, CUDA execution provider (no CPU fallback)", ("onnxruntime",)),
        Runtime("litert", (".tflite",), ("cpu",), "ai_edge_litert",
                lambda p, device, threads: LiteRTModel(p, device=device, threads=threads),
                "LiteRT interpreter with XNNPACK", ("ai_edge_litert.interpreter",)),
    )
}


def get_runtime(key: str) -> Runtime:
    try:
        return RUNTIMES[key]
    except KeyError:
        raise UsageError(f"unknown runtime {key!r}; valid: {', '.join(RUNTIMES)}") from None


def runtimes_for(path: str | Path, device: str | None = None) -> list[Runtime]:
    suffix = Path(path).suffix
    return [r for r in RUNTIMES.values()
            if suffix in r.suffixes and (device is None or device in r.devices)]


def default_runtime(path: str | Path, device: str = "cpu") -> Runtime:
    candidates = runtimes_for(path, device)
    if not candidates:
        suffixes = sorted({s for r in RUNTIMES.values() for s in r.suffixes})
        raise UsageError(
            f"{path}: no runtime runs '{Path(path).suffix}' files on {device}; "
            f"expected one of {', '.join(suffixes)}"
        )
    return candidates[0]


def load(path: str | Path, runtime: str | None = None, *, device: str = "cpu",
         threads: int | None = None, contract: IOContract | None = CLASSIFIER) -> LoadedModel:
    """Load `path` on a runtime (default: the first that runs its suffix on `device`) and check it
    against `contract` (None: no check, for callers that collect mismatches themselves)."""
    path = Path(path)
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    chosen = get_runtime(runtime) if runtime else default_runtime(path, device)
    if path.suffix not in chosen.suffixes:
        raise UsageError(f"{path}: runtime {chosen.key} runs {', '.join(chosen.suffixes)} files")
    if not path.is_file():
        raise ArtifactError(f"{path}: model file not found. Export or train it first")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    model = chosen.loader(path, device=device, threads=threads)
    problems = model.mismatches(contract) if contract is not None else []
    if problems and contract == CLASSIFIER and model.quantized_io and not model.mismatches(INT8_CLASSIFIER):
        problems = []  # the int8-I/O exception: `run` quantizes and dequantizes with the file's own
    if problems:
        raise contract_error(path, problems)
    return model


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
