"""One small interface to run a model file, whatever produced it.

    model = runtimes.load(path, runtime="onnxruntime", device="cpu", threads=2)
    probabilities = model.run(batch)        # float32 [N,28,28,1] in [0,1] -> [N,10]
    model.provider                          # what actually executed, e.g. CPUExecutionProvider

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

from toolkit.errors import ArtifactError, DeviceUnavailableError, UsageError
from toolkit.quiet import quiet_stderr

DEVICES = ("cpu", "gpu")


class LoadedModel:
    """A model ready to run. Subclasses set `provider`, `input_name`, `output_names`."""

    runtime: str = ""
    provider: str = ""
    device: str = "cpu"
    threads: int | None = None
    input_name: str = "image"
    output_names: tuple[str, ...] = ("probabilities",)
    input_shape: tuple[Any, ...] | None = None  # as declared by the file; batch axis symbolic/None/-1

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The first output for a float32 [N,28,28,1] batch."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "provider": self.provider, "device": self.device,
                "threads": self.threads}


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
        self.input_name = self.model.inputs[0].name
        self.output_names = tuple(self.model.output_names)
        self.input_shape = tuple(self.model.inputs[0].shape)
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
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(self.session.get_inputs()[0].shape)
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_names[0]], {self.input_name: batch})[0]


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
        self.input_shape = tuple(int(d) for d in details["shape_signature"])
        self.input_name = names.get(details["index"], _tflite_name(details["name"], "image"))
        self.output_names = tuple(names.get(o["index"], _tflite_name(o["name"], "probabilities"))
                                  for o in outputs)
        # The contract's output if the signature names it, else the first.
        first = self.output_names.index("probabilities") if "probabilities" in self.output_names else 0
        self._output_index = outputs[first]["index"]
        self._batch = -1

    def run(self, batch: np.ndarray) -> np.ndarray:
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


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Runtime:
    key: str
    suffixes: tuple[str, ...]
    devices: tuple[str, ...]
    module: str  # imported to check availability, without loading a model
    loader: Callable[..., LoadedModel] = field(repr=False)
    description: str = ""

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
                "Keras model called as a compiled tf.function"),
        Runtime("keras-predict", (".keras",), ("cpu",), "tensorflow",
                lambda p, device, threads: KerasModel(p, predict=True, device=device,
                                                      threads=threads),
                "Keras model.predict, as users call it"),
        Runtime("onnxruntime", (".onnx",), ("cpu",), "onnxruntime",
                lambda p, device, threads: OrtModel(p, device="cpu", threads=threads),
                "ONNX Runtime, CPU execution provider"),
        Runtime("onnxruntime-cuda", (".onnx",), ("gpu",), "onnxruntime",
                lambda p, device, threads: OrtModel(p, device="gpu", threads=threads),
                "ONNX Runtime, CUDA execution provider (no CPU fallback)"),
        Runtime("litert", (".tflite",), ("cpu",), "ai_edge_litert",
                lambda p, device, threads: LiteRTModel(p, device=device, threads=threads),
                "LiteRT interpreter with XNNPACK"),
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
         threads: int | None = None) -> LoadedModel:
    """Load `path` on a runtime (default: the first that runs its suffix on `device`)."""
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
    return chosen.loader(path, device=device, threads=threads)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
