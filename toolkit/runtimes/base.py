"""What every runtime's loaded model is: `LoadedModel`, the one interface parity, the benchmarks,
`toolkit predict`, the recommender and the server run a file through, and the checks of a
file's declared and computed outputs against the model contract (toolkit.core.contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.contract import CLASSIFIER, INPUT_NAME, OUTPUT_NAME, IOContract
from toolkit.core.errors import ArtifactError, ContractError, DeviceUnavailableError


class RuntimeUnavailableError(DeviceUnavailableError):
    """A runtime's package is not installed here (exit 6, like a missing device)."""


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

    # The precision the runtime computes in, where it differs from the file's (e.g. a runtime
    # that runs a float32 file in bfloat16); None: the file's own precision.
    computes: str | None = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The contract's output for a batch in the contract's input format."""
        raise NotImplementedError

    def run_all(self, images: np.ndarray, batch: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Outputs for every image, in batches of `batch`, and how they were computed (a runtime
        that can spread them over processes says how many and how fast each image ran)."""
        outputs = [np.asarray(self.run(images[i:i + batch])) for i in range(0, len(images), batch)]
        return np.concatenate(outputs), {}

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

    def run_facts(self) -> dict[str, Any]:
        """What the runtime says about how it runs this file, for the records beside its figures:
        the precision it computes (where it differs from the file's) and, for a runtime that can
        tell, its settings and the instruction sets its kernels use (OpenVINO)."""
        return {"computes": self.computes} if self.computes else {}

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


def fail_load(path: Path, what: str, exc: BaseException) -> ArtifactError:
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return ArtifactError(
        f"{path}: not a loadable {what} ({reason}). Re-export it (toolkit export --force) "
        "or restore the file"
    )


def dtype_name(value: Any) -> str:
    try:
        return np.dtype(value).name
    except TypeError:
        return str(value)


def int_quantization(details: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero point) of an int8/uint8 tensor that has them, else None (a float tensor)."""
    scale, zero_point = details.get("quantization") or (0.0, 0)
    if np.dtype(details["dtype"]).kind not in "iu" or not scale:
        return None
    return float(scale), int(zero_point)


def quantize(batch: np.ndarray, quant: tuple[float, int] | None, dtype: str | None) -> np.ndarray:
    """Float images in [0,1] as an int8-input file takes them: q = round(x / scale) + zero point
    (the identity for a float input)."""
    if quant is None:
        return batch
    (scale, zero_point), info = quant, np.iinfo(dtype)
    q = np.round(np.asarray(batch, dtype=np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(output: np.ndarray, quant: tuple[float, int] | None) -> np.ndarray:
    """An int8 output as probabilities: (q - zero point) x scale (the identity for a float one)."""
    if quant is None:
        return output
    scale, zero_point = quant
    return ((output.astype(np.float32) - zero_point) * scale).astype(np.float32)


class OptionalPackage:
    """A runtime's package from an extra (tflite-micro, openvino): whether it is here, its
    version, and the module or one line naming the package and how to install it (exit 6)."""

    def __init__(self, runtime: str, distribution: str, module: str, install: str) -> None:
        self.runtime, self.distribution, self.module, self.install = runtime, distribution, module, install

    def available(self) -> bool:
        import importlib.util

        return importlib.util.find_spec(self.module.split(".")[0]) is not None

    def version(self) -> str | None:
        import importlib.metadata

        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def require(self) -> Any:
        if not self.available():
            raise RuntimeUnavailableError(f"the {self.runtime} runtime needs {self.distribution}, which is "
                                          f"not installed here; install it with: {self.install}")
        import importlib

        return importlib.import_module(self.module)


class TfliteIOModel(LoadedModel):
    """A TFLite interpreter's model (LiteRT, TFLM): a file with int8 input and output carries its
    scale and zero point, so `run` quantizes float images and dequantizes the output with them;
    `run_encoded` takes and returns the file's own types (what the benchmarks time)."""

    input_quant: tuple[float, int] | None = None
    output_quant: tuple[float, int] | None = None

    def encode(self, batch: np.ndarray) -> np.ndarray:
        return quantize(batch, self.input_quant, self.input_dtype)

    def decode(self, output: np.ndarray) -> np.ndarray:
        return dequantize(output, self.output_quant)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.decode(self.run_encoded(self.encode(batch)))

    def run_encoded(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError
