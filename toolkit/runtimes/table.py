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

RUNTIMES is the one table of runtimes (key, file suffixes, device, loader; one module per runtime:
keras, ort, litert, tflm, openvino). Parity, benchmarks,
`toolkit predict` and the recommender all go through it, always by key. Loaders import their
library lazily, so ONNX Runtime, LiteRT and OpenVINO paths never import TensorFlow.

OpenVINO is two entries: `openvino` (float32 forced) and `openvino-bf16` (the CPU plugin's default,
bfloat16 on CPUs with native bf16), so each precision is its own parity row, benchmark row and
report row, and the server can be told which one to run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.core.contract import CLASSIFIER, INT8_CLASSIFIER, IOContract
from toolkit.core.errors import ArtifactError, UsageError
from toolkit.runtimes.base import LoadedModel, contract_error

DEVICES = ("cpu", "gpu")
OPENVINO_INSTALL = "pip install -e '.[openvino]'"
KERAS_KEYS = ("keras", "keras-predict")


def _keras(path: Path, *, device: str, threads: int | None, predict: bool) -> LoadedModel:
    from toolkit.runtimes.keras import KerasModel

    return KerasModel(path, predict=predict, device=device, threads=threads)


def _ort(path: Path, *, device: str, threads: int | None) -> LoadedModel:
    from toolkit.runtimes.ort import OrtModel

    return OrtModel(path, device=device, threads=threads)


def _tflm(path: Path, *, device: str, threads: int | None) -> LoadedModel:
    from toolkit.runtimes.tflm import TflmModel

    return TflmModel(path, device=device, threads=threads)


def _openvino(path: Path, *, device: str, threads: int | None, hint: str | None) -> LoadedModel:
    from toolkit.runtimes.openvino import OpenVinoModel

    return OpenVinoModel(path, device=device, threads=threads, hint=hint)


def _bf16_unavailable() -> str:
    from toolkit.runtimes.openvino import bf16_unavailable

    return bf16_unavailable()


def _litert(path: Path, *, device: str, threads: int | None) -> LoadedModel:
    from toolkit.runtimes.litert import LiteRTModel

    return LiteRTModel(path, device=device, threads=threads)


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
    # Whether its times mean anything for deployment. TFLM on this host runs a microcontroller's
    # reference kernels on an x86 CPU: parity states its host time, the benchmarks never time it.
    timed: bool = True
    # How to install it, for the one line that says it is missing ("" for the base dependencies).
    install: str = ""
    # Besides its module, what this machine must have: "" when it has it, else why not (a CPU
    # without native bf16 for openvino-bf16).
    requires: Callable[[], str] | None = field(default=None, repr=False)
    # Whether parity runs files on it as rows of their own. The CUDA provider is the same runtime
    # on another device: the benchmarks check its top-1 against the CPU's on every case instead.
    parity: bool = True

    def available(self) -> bool:
        return not self.unavailable_reason()

    def unavailable_reason(self) -> str:
        """Why this runtime cannot run here, in one line ("" when it can)."""
        try:
            importlib.import_module(self.module)
        except ImportError:
            return f"{self.key} is not installed here: {self.install or 'pip install -e .'}"
        if self.key == "onnxruntime-cuda":
            from toolkit.core.machine import cuda_available

            return "" if cuda_available() else "ONNX Runtime has no CUDA execution provider here"
        return self.requires() if self.requires else ""


RUNTIMES: dict[str, Runtime] = {
    r.key: r
    for r in (
        Runtime("keras", (".keras",), ("cpu",), "tensorflow",
                lambda p, device, threads: _keras(p, device=device, threads=threads, predict=False),
                "Keras model called as a compiled tf.function", ("toolkit.core.tf", "toolkit.specs.models")),
        Runtime("keras-predict", (".keras",), ("cpu",), "tensorflow",
                lambda p, device, threads: _keras(p, device=device, threads=threads, predict=True),
                "Keras model.predict, as users call it", ("toolkit.core.tf", "toolkit.specs.models")),
        Runtime("onnxruntime", (".onnx",), ("cpu",), "onnxruntime",
                lambda p, device, threads: _ort(p, device="cpu", threads=threads),
                "ONNX Runtime, CPU execution provider", ("onnxruntime",)),
        Runtime("onnxruntime-cuda", (".onnx",), ("gpu",), "onnxruntime",
                lambda p, device, threads: _ort(p, device="gpu", threads=threads),
                "ONNX Runtime, CUDA execution provider (no CPU fallback)", ("onnxruntime",), parity=False),
        Runtime("openvino", (".onnx", ".xml"), ("cpu",), "openvino",
                lambda p, device, threads: _openvino(p, device=device, threads=threads, hint="f32"),
                "OpenVINO CPU plugin, float32 forced (INFERENCE_PRECISION_HINT=f32)", ("openvino",),
                install=OPENVINO_INSTALL),
        Runtime("openvino-bf16", (".onnx", ".xml"), ("cpu",), "openvino",
                lambda p, device, threads: _openvino(p, device=device, threads=threads, hint=None),
                "OpenVINO CPU plugin at its default precision: bfloat16 on CPUs with native bf16 (AMX, "
                "AVX512-BF16)", ("openvino",), install=OPENVINO_INSTALL, requires=_bf16_unavailable),
        Runtime("litert", (".tflite",), ("cpu",), "ai_edge_litert",
                lambda p, device, threads: _litert(p, device=device, threads=threads),
                "LiteRT interpreter with XNNPACK", ("ai_edge_litert.interpreter",)),
        Runtime("tflm", (".tflite",), ("cpu",), "tflite_micro",
                lambda p, device, threads: _tflm(p, device=device, threads=threads),
                "TFLite Micro's interpreter and reference kernels (host build), full-integer files only",
                ("tflite_micro.python.tflite_micro.runtime",), timed=False,
                install="pip install -e '.[mcu]' (tflite-micro: Linux x86-64 wheels only)"),
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
