"""What a .tflite file says about itself, read from its flatbuffer (no TensorFlow, no interpreter):
the quantization of its input and output, the operators it uses, whether it is full-integer
(what a microcontroller runtime runs), and an estimate of the tensor arena TFLite Micro needs.

The arena estimate has two parts, as TFLM's allocator has:
- activations (the arena's "head"): TFLite runs a subgraph's operators in the order they are
  stored. An activation tensor (not a constant held in a buffer) is alive from the operator that
  produces it (the subgraph's inputs: from the start) to the last operator that reads it (the
  outputs: to the end). The head is the peak, over operators, of the bytes of the activation
  tensors alive at once at batch 1, each buffer aligned to 16 bytes, as TFLM's planner aligns
  them (weights stay in flash and are not counted);
- persistent data (the "tail"): per tensor and per operator structures, the operators' own data
  and per-channel requantization arrays (two int32 per output channel), modelled with sizes of a
  64-bit host and calibrated against what TFLM's recording allocator reports for the toolkit's
  exports (toolkit.runtimes.tflm measures the real figure where tflite-micro is installed).

`scratch_bytes` is the largest im2col buffer an optimized kernel library (CMSIS-NN's
arm_convolve_s8: 2 columns of in_channels x kernel_h x kernel_w int16) asks for among the
file's convolutions; TFLM's reference kernels need none. It is the margin a firmware adds to
the measured arena when it links optimized kernels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

_BITS = {"FLOAT32": 32, "FLOAT16": 16, "INT32": 32, "UINT8": 8, "INT64": 64, "BOOL": 8, "INT16": 16,
         "COMPLEX64": 64, "INT8": 8, "FLOAT64": 64, "COMPLEX128": 128, "UINT64": 64, "UINT32": 32,
         "UINT16": 16, "INT4": 4, "BFLOAT16": 16, "INT2": 2, "UINT4": 4}
ALIGN = 16  # TFLM aligns every arena buffer to 16 bytes
# The persistent-data model (bytes on a 64-bit host; see the module docstring). Calibrated on the
# toolkit's int8 and int8io exports against TFLM's recording allocator.
EVAL_TENSOR = 24  # TfLiteEvalTensor, every tensor of the subgraph
NODE = 64  # NodeAndRegistration, every operator
OP_DATA = 56  # an operator's own persistent data, on average
IO_TENSORS = 192  # the persistent TfLiteTensor of the input and output, with their quantization
PER_CHANNEL = 8  # int32 multiplier + int32 shift per output channel of a quantized conv/dense
FIXED = 700  # the allocator's own structures
FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"}
# Operators that only convert at the edges of a full-integer file with float input or output.
EDGE_OPS = {"QUANTIZE", "DEQUANTIZE"}
CONV_OPS = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise"}


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class Quantization:
    """real = (q - zero_point) * scale, for an int8 tensor."""

    dtype: str
    scale: float
    zero_point: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TfliteInfo:
    arena_bytes: int  # the estimate: activations + persistent
    arena_peak_op: str  # the operator at which the activation peak occurs, e.g. "3:CONV_2D"
    operators: int
    input_quantization: Quantization | None  # None: a float input
    output_quantization: Quantization | None
    activation_bytes: int = 0  # the head: peak of live activations at batch 1, aligned
    persistent_bytes: int = 0  # the tail, modelled
    operator_names: tuple[str, ...] = ()  # the builtin operators used, sorted, each once
    full_integer: bool = False  # every computing operator runs on integers
    float_operators: tuple[str, ...] = ()  # why not: the operators that compute in float
    scratch_bytes: int = 0  # the largest CMSIS-NN im2col buffer among its convolutions


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _names(enum_class) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}


class _Graph:
    """The first subgraph of a flatbuffer, with the lookups the readers below share."""

    def __init__(self, flatbuffer: bytes | bytearray | str | Path) -> None:
        if isinstance(flatbuffer, str | Path):
            flatbuffer = Path(flatbuffer).read_bytes()
        schema = _schema()
        self.model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
        self.graph = self.model.subgraphs[0]
        self.type_names = _names(schema.TensorType)
        self.op_names = _names(schema.BuiltinOperator)
        self.ops = self.graph.operators or []

    def op_name(self, op) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        return self.op_names.get(builtin, str(builtin))

    def type_of(self, index: int) -> str:
        return self.type_names.get(self.graph.tensors[index].type, "?")

    @staticmethod
    def indices(values) -> list[int]:
        return [int(i) for i in (values if values is not None else ()) if i >= 0]

    def constant(self, index: int) -> bool:
        tensor = self.graph.tensors[index]
        buffers = self.model.buffers or []
        buffer = buffers[tensor.buffer] if tensor.buffer < len(buffers) else None
        has_data = buffer is not None and ((buffer.data is not None and len(buffer.data) > 0)
                                           or (buffer.offset or 0) > 1)
        return has_data or bool(tensor.isVariable)

    def nbytes(self, index: int) -> int:
        tensor = self.graph.tensors[index]
        dims = [max(1, int(d)) for d in (tensor.shape if tensor.shape is not None else [])]
        return int(np.prod(dims, dtype=np.int64)) * _BITS.get(self.type_of(index), 32) // 8

    def channels(self, index: int) -> int:
        """Quantization scales of a weight tensor: its output channels when per-channel."""
        q = self.graph.tensors[index].quantization
        return len(q.scale) if q is not None and q.scale is not None else 0


def read(flatbuffer: bytes | bytearray | str | Path) -> TfliteInfo:
    g = _Graph(flatbuffer)
    activations, peak_at = _activations(g)
    peak_op = f"{peak_at}:{g.op_name(g.ops[peak_at])}" if 0 <= peak_at < len(g.ops) else "-"
    floats = _float_operators(g)
    persistent = _persistent(g)
    return TfliteInfo(
        arena_bytes=activations + persistent, arena_peak_op=peak_op, operators=len(g.ops),
        input_quantization=_quantization(g, int(g.graph.inputs[0])),
        output_quantization=_quantization(g, int(g.graph.outputs[0])),
        activation_bytes=activations, persistent_bytes=persistent,
        operator_names=tuple(sorted({g.op_name(op) for op in g.ops})),
        full_integer=not floats, float_operators=floats, scratch_bytes=_scratch(g))


def _quantization(g: _Graph, index: int) -> Quantization | None:
    tensor = g.graph.tensors[index]
    dtype = g.type_of(index).lower()
    q = tensor.quantization
    if dtype not in ("int8", "uint8") or q is None or q.scale is None or len(q.scale) != 1:
        return None
    return Quantization(dtype, float(q.scale[0]), int(q.zeroPoint[0]))


def _float_operators(g: _Graph) -> tuple[str, ...]:
    """Operators that compute on float tensors or weights (edge conversions aside): a file with
    none is full-integer."""
    found = []
    for step, op in enumerate(g.ops):
        name = g.op_name(op)
        if name in EDGE_OPS:
            continue
        tensors = g.indices(op.inputs) + g.indices(op.outputs)
        if any(g.type_of(i) in FLOAT_TYPES for i in tensors):
            found.append(f"{step}:{name}")
    return tuple(found)


def _activations(g: _Graph) -> tuple[int, int]:
    """(peak bytes of live activation tensors, each aligned; index of the operator at the peak)."""
    # An operator whose inputs are all constants (e.g. DEQUANTIZE of float16 weights) is folded
    # when the interpreter prepares the model: its output is a weight too, not an activation.
    folded: set[int] = set()
    for op in g.ops:
        inputs = g.indices(op.inputs)
        if inputs and all(g.constant(i) or i in folded for i in inputs):
            folded.update(g.indices(op.outputs))
    n_ops = len(g.ops)
    first: dict[int, int] = {int(i): -1 for i in g.graph.inputs}
    last: dict[int, int] = {int(i): n_ops for i in g.graph.outputs}
    for step, op in enumerate(g.ops):
        for i in g.indices(op.outputs):
            first.setdefault(i, step)
        for i in g.indices(op.inputs):
            last[i] = max(last.get(i, step), step)
    live = [i for i in set(first) | set(last) if not g.constant(i) and i not in folded]
    peak, peak_at = 0, -1
    for step in range(n_ops):
        total = sum(_align(g.nbytes(i)) for i in live if first.get(i, step) <= step <= last.get(i, step))
        if total > peak:
            peak, peak_at = total, step
    return peak, peak_at


def _persistent(g: _Graph) -> int:
    """The modelled tail of TFLM's arena (see the module docstring)."""
    channels = 0
    for op in g.ops:
        inputs = g.indices(op.inputs)
        if g.op_name(op) in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(inputs) > 1:
            channels += max(g.channels(inputs[1]), 1)
    return (EVAL_TENSOR * len(g.graph.tensors) + (NODE + OP_DATA) * len(g.ops) + IO_TENSORS
            + PER_CHANNEL * channels + FIXED)


def _scratch(g: _Graph) -> int:
    """The largest CMSIS-NN im2col scratch buffer among the convolutions (0 without any)."""
    largest = 0
    for op in g.ops:
        kind = CONV_OPS.get(g.op_name(op))
        inputs = g.indices(op.inputs)
        if kind is None or len(inputs) < 2:
            continue
        shape = [int(d) for d in g.graph.tensors[inputs[1]].shape]  # [out, kh, kw, in] or [1, kh, kw, out]
        # arm_convolve_s8_get_buffer_size: two im2col columns of int16; the depthwise one
        # (arm_depthwise_conv_s8_opt_get_buffer_size): one int16 column over every channel.
        columns = 2 if kind == "conv" else 1
        largest = max(largest, columns * shape[3] * shape[1] * shape[2] * 2)
    return _align(largest)
