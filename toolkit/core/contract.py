"""The model contract in one place: what every model and exported file takes and returns.

    image         float32 [N,28,28,1], grayscale, pixel/255 in [0,1]
    probabilities float32 [N,10], softmax over CLASS_NAMES

Models, exporters, runtimes, parity, predict and the benchmarks all read these names; nobody
spells them out again. `IOContract` describes one file's inputs and outputs, so that a format
whose file legitimately differs (the microcontroller variant with int8 input and output,
INT8_CLASSIFIER, or the recommender's embedding model) carries its own description instead of
a special case in every consumer. Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
IMAGE_SHAPE: tuple[int, int, int] = (28, 28, 1)
NUM_CLASSES = len(CLASS_NAMES)
EMBEDDING_LAYER = "embedding"  # the last hidden dense layer: the recommender's features
# int8io: full integer with int8 input and output (the microcontroller build; see INT8_CLASSIFIER).
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "dynamic", "int8io")
PREPROCESSING = ("float32 NHWC [N,28,28,1], grayscale, pixel/255 in [0,1]; "
                 "output softmax probabilities [N,10]")

# Training arithmetic a spec may ask for (toolkit.training.precision resolves "auto" per machine).
MIXED_PRECISION_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")


# ---------------------------------------------------------------- one file's inputs and outputs


ANY = "*"  # an axis of any size (e.g. the embedding width, which depends on the spec)
Dim = int | str | None  # None: a dynamic axis (the batch)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name: "float32", "int8", ...
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ",".join("N" if d is None else str(d) for d in self.shape)  # ANY prints as "*"
        return f"{self.name!r} {self.dtype} [{dims}]"


@dataclass(frozen=True)
class IOContract:
    """One input and one output a model file must have. A variant whose file has other dtypes
    (e.g. int8 in and out, with its quantization parameters in its own metadata) gets its own
    IOContract in the format registry; the checks below stay the same."""

    input: TensorSpec
    output: TensorSpec
    preprocessing: str = PREPROCESSING

    def mismatches(self, *, input_name: str, input_dtype: str | None, input_shape: Sequence[Any] | None,
                   output_name: str | None, output_dtype: str | None,
                   output_shape: Sequence[Any] | None) -> list[str]:
        """Every way a file's declared input/output differs from this contract (empty: none).
        Unknown facts (None) are not held against the file; a dynamic axis is anything that is
        not a positive int (ONNX "batch", LiteRT -1, Keras None)."""
        problems: list[str] = []
        for what, spec, name, dtype, shape in (
            ("input", self.input, input_name, input_dtype, input_shape),
            ("output", self.output, output_name, output_dtype, output_shape),
        ):
            found = _describe(name, dtype, shape)
            wrong = (name is not None and name != spec.name) or (dtype is not None and dtype != spec.dtype)
            if shape is not None and not _shape_matches(shape, spec.shape):
                wrong = True
            if wrong:
                problems.append(f"{what} {found}, expected {spec.describe()}")
        return problems


def _dynamic(dim: Any) -> bool:
    return not (isinstance(dim, int) and dim > 0)


def _shape_matches(shape: Sequence[Any], expected: Sequence[Dim]) -> bool:
    if len(shape) != len(expected):
        return False
    return all(e == ANY or (_dynamic(d) if e is None else d == e)
               for d, e in zip(shape, expected, strict=True))


def _describe(name: str | None, dtype: str | None, shape: Sequence[Any] | None) -> str:
    dims = "?" if shape is None else ",".join("N" if _dynamic(d) else str(d) for d in shape)
    return f"{name!r} {dtype or '?'} [{dims}]"


CLASSIFIER = IOContract(
    input=TensorSpec(INPUT_NAME, "float32", (None, *IMAGE_SHAPE)),
    output=TensorSpec(OUTPUT_NAME, "float32", (None, NUM_CLASSES)),
)


# The one documented exception to the float32 contract: `tflite-int8io`, a full-integer file
# with int8 input and output (the TFLite Micro convention). Its input and output scale and zero
# point are in the file (and its metadata); runtimes quantize images with them (q = round(x /
# scale) + zero_point) and dequantize the output, so every consumer still sees CLASSIFIER.
INT8_CLASSIFIER = IOContract(
    input=TensorSpec(INPUT_NAME, "int8", (None, *IMAGE_SHAPE)),
    output=TensorSpec(OUTPUT_NAME, "int8", (None, NUM_CLASSES)),
    preprocessing=("int8 NHWC [N,28,28,1]: q = round(pixel/255 / input scale) + input zero point; "
                   "output int8 [N,10]: probability = (q - output zero point) x output scale (scales "
                   "and zero points in the file's metadata)"),
)


def embedding_contract(dim: int | None = None) -> IOContract:
    """The recommender's embedding model: the classifier's input, penultimate activations out."""
    return IOContract(input=CLASSIFIER.input,
                      output=TensorSpec(EMBEDDING_LAYER, "float32", (None, ANY if dim is None else dim)),
                      preprocessing="float32 NHWC [N,28,28,1] in [0,1]; output penultimate activations")
