"""C++ source for a microcontroller firmware (TFLite Micro), made from the `tflite-int8io` file: the
`tflm-c` export. Its parity is that file's (the bytes are the same; a test proves it).

    export/tflm/model_data.h    declarations: the model array and its length, kTensorArenaSize,
                                the input and output scale and zero point, the ten class names
    export/tflm/model_data.cc   the model as `alignas(16) const unsigned char`, the class names
    export/tflm/model_ops.h     RegisterOps(): exactly the operators the model uses, added to a
                                tflite::MicroMutableOpResolver<kNumOps>

kTensorArenaSize is TFLM's measured minimum (toolkit.runtimes.tflm.measure_arena, on a 64-bit
host: an upper bound for TFLM's reference kernels on a 32-bit microcontroller), rounded up to 16
bytes, plus a margin for optimized kernels: the largest CMSIS-NN im2col scratch buffer among the
model's convolutions. Where tflite-micro is not installed the toolkit's estimate stands in, and the
header says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import __version__
from toolkit.core import artifacts
from toolkit.core.contract import CLASS_NAMES
from toolkit.runtimes import tflite_info

FILES = ("model_data.h", "model_data.cc", "model_ops.h")
NAMESPACE = "fashion_mnist"
BYTES_PER_LINE = 16
_HEX = [f"0x{b:02x}, " for b in range(256)]
# Builtin operators whose resolver method is not the CamelCase of their name (checked against
# all 100 of TFLM's micro_mutable_op_resolver.h by tests/test_tflm.py).
METHODS = {"BATCH_MATMUL": "BatchMatMul", "CUMSUM": "CumSum", "PADV2": "PadV2",
           "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM"}


def resolver_method(op: str) -> str:
    """TFLM's MicroMutableOpResolver method for a builtin operator: CONV_2D -> AddConv2D (a part
    that starts with a digit keeps its case: 2D)."""
    camel = "".join(part if part[:1].isdigit() else part.capitalize() for part in op.split("_"))
    return "Add" + METHODS.get(op, camel)


def export(model: Any, path: str | Path, *, precision: str = "int8io", calibration: np.ndarray | None = None,
           opset: int | None = None, metadata: dict[str, str] | None = None,
           source: Path | None = None) -> dict[str, Any]:
    """Write the three files beside `path` (model_data.cc) from the `source` .tflite file."""
    if source is None or not Path(source).is_file():
        raise ValueError("the C source is made from the tflite-int8io file; export that first")
    data = Path(source).read_bytes()
    info = tflite_info.read(data)
    if info.input_quantization is None or info.output_quantization is None:
        raise ValueError(f"{source} has no int8 input and output; "
                         "the C source needs the tflite-int8io file")
    arena = _arena(Path(source), calibration, info)
    folder = Path(path).parent
    header = _header(info, arena, source=Path(source), sha=artifacts.sha256_file(source), length=len(data),
                     spec=(metadata or {}).get("spec_name", ""))
    texts = {"model_data.h": header, "model_data.cc": _source(data), "model_ops.h": _ops(info.operator_names)}
    for name in FILES:
        artifacts.write_text(folder / name, texts[name])
    return {"method": "the tflite-int8io flatbuffer as C++ arrays, an op resolver of exactly its operators",
            "operators": list(info.operator_names), "tensor_arena_size": arena["size"],
            "arena_source": arena["source"], "arena_measured": arena["measured"], "model_bytes": len(data),
            "files": [{"path": name, "size_bytes": (folder / name).stat().st_size,
                       "sha256": artifacts.sha256_file(folder / name)} for name in FILES]}


def _arena(source: Path, calibration: np.ndarray | None, info: tflite_info.TfliteInfo) -> dict[str, Any]:
    """kTensorArenaSize and where it came from: TFLM's measured minimum, else the estimate."""
    from toolkit.runtimes import tflm

    if tflm.available() and calibration is not None:
        measured = tflm.measure_arena(source, calibration)
        return {"size": measured.recommended, "minimum": measured.minimum,
                "margin": tflm.align16(measured.scratch),
                "measured": True,
                "source": f"TFLM's measured minimum ({tflm.DISTRIBUTION} {measured.tflm_version}, "
                          "64-bit host)"}
    minimum, margin = tflm.align16(info.arena_bytes), tflm.align16(info.scratch_bytes)
    return {"size": minimum + margin, "minimum": minimum, "margin": margin,
            "measured": False,
            "source": "the toolkit's estimate (tflite-micro was not installed where this was exported: "
                      "measure it with `toolkit parity` and re-export)"}


def _guard(name: str) -> str:
    return f"{NAMESPACE.upper()}_{re.sub(r'[^A-Z0-9]', '_', name.upper())}_"


def _header(info: tflite_info.TfliteInfo, arena: dict[str, Any], *, source: Path, sha: str, length: int,
            spec: str) -> str:
    q_in, q_out = info.input_quantization, info.output_quantization
    guard = _guard("model_data.h")
    return f"""// Generated by fashion-mnist-toolkit {__version__} from {spec}/export/{source.name}
// (sha256 {sha}, {length:,} bytes).
// Do not edit: `toolkit export --exp {spec} --format c --force` rewrites it.
#ifndef {guard}
#define {guard}

#include <cstddef>

namespace {NAMESPACE} {{

// The full-integer TFLite model, int8 input and output; 16-byte aligned, as TFLM requires.
extern const unsigned char kModelData[];
extern const unsigned int kModelDataLen;  // {length} bytes

// Tensor arena: {arena['minimum']:,} bytes, {arena['source']}, rounded up to 16, plus
// {arena['margin']:,} bytes of margin: the largest im2col scratch buffer an optimized kernel library
// (CMSIS-NN) asks for among the model's convolutions. TFLM's reference kernels need no scratch.
constexpr std::size_t kTensorArenaSize = {arena['size']};

// Input int8 [1,28,28,1], grayscale, light garment on dark:
//   q = round(pixel / 255 / kInputScale) + kInputZeroPoint
constexpr float kInputScale = {q_in.scale!r}f;
constexpr int kInputZeroPoint = {q_in.zero_point};
// Output int8 [1,10]: probability = (q - kOutputZeroPoint) * kOutputScale.
constexpr float kOutputScale = {q_out.scale!r}f;
constexpr int kOutputZeroPoint = {q_out.zero_point};

constexpr int kNumClasses = {len(CLASS_NAMES)};
extern const char* const kClassNames[kNumClasses];

}}  // namespace {NAMESPACE}

#endif  // {guard}
"""


def _source(data: bytes) -> str:
    text = "".join(map(_HEX.__getitem__, data))  # "0x00, " per byte: an 11 MB model in a second
    width = len(_HEX[0]) * BYTES_PER_LINE
    body = "\n".join(f"    {text[i:i + width].rstrip()}" for i in range(0, len(text), width))
    names = ",\n".join(f'    "{name}"' for name in CLASS_NAMES)
    return f"""// Generated by fashion-mnist-toolkit {__version__}: the model bytes. Do not edit.
#include "model_data.h"

namespace {NAMESPACE} {{

alignas(16) const unsigned char kModelData[] = {{
{body}
}};
const unsigned int kModelDataLen = {len(data)};

const char* const kClassNames[kNumClasses] = {{
{names}
}};

}}  // namespace {NAMESPACE}
"""


def _ops(operators: tuple[str, ...]) -> str:
    guard = _guard("model_ops.h")
    adds = "\n".join(f"  if (resolver.{resolver_method(op)}() != kTfLiteOk) return kTfLiteError;  // {op}"
                     for op in operators)
    return f"""// Generated by fashion-mnist-toolkit {__version__}: the operators of model_data.cc.
// Do not edit.
#ifndef {guard}
#define {guard}

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

namespace {NAMESPACE} {{

constexpr int kNumOps = {len(operators)};
using OpResolver = tflite::MicroMutableOpResolver<kNumOps>;

// Adds exactly the {len(operators)} operators the model uses (a firmware links only their kernels).
inline TfLiteStatus RegisterOps(OpResolver& resolver) {{
{adds}
  return kTfLiteOk;
}}

}}  // namespace {NAMESPACE}

#endif  // {guard}
"""


def registered_operators(text: str) -> list[str]:
    """The operators a generated model_ops.h registers, read back from its comments (for checks)."""
    return re.findall(r"return kTfLiteError;  // (\w+)", text)
