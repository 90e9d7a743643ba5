"""What a .tflite file says about itself, read from its flatbuffer (no TensorFlow, no interpreter):
the quantization of its input and output, and the tensor arena a microcontroller would need.

Tensor arena: TFLite runs a subgraph's operators in the order they are stored. An activation
tensor (not a constant held in a buffer) is alive from the operator that produces it (the
subgraph's inputs: from the start) to the last operator that reads it (the outputs: to the end).
The arena is the peak, over operators, of the bytes of the activation tensors alive at once, at
batch 1: what a memory planner that reuses freed memory perfectly would need (TFLite Micro's
greedy planner needs at least this; weights stay in flash and are not counted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

_BITS = {"FLOAT32": 32, "FLOAT16": 16, "INT32": 32, "UINT8": 8, "INT64": 64, "BOOL": 8, "INT16": 16,
         "COMPLEX64": 64, "INT8": 8, "FLOAT64": 64, "COMPLEX128": 128, "UINT64": 64, "UINT32": 32,
         "UINT16": 16, "INT4": 4, "BFLOAT16": 16, "INT2": 2, "UINT4": 4}


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
    arena_bytes: int
    arena_peak_op: str  # the operator at which the peak occurs, e.g. "3:CONV_2D"
    operators: int
    input_quantization: Quantization | None  # None: a float input
    output_quantization: Quantization | None


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _names(enum_class) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}


def read(flatbuffer: bytes | bytearray | str | Path) -> TfliteInfo:
    if isinstance(flatbuffer, str | Path):
        flatbuffer = Path(flatbuffer).read_bytes()
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    graph = model.subgraphs[0]
    type_names = _names(schema.TensorType)
    op_names = _names(schema.BuiltinOperator)

    def quantization(index: int) -> Quantization | None:
        tensor = graph.tensors[index]
        dtype = type_names.get(tensor.type, "?").lower()
        q = tensor.quantization
        if dtype not in ("int8", "uint8") or q is None or q.scale is None or len(q.scale) != 1:
            return None
        return Quantization(dtype, float(q.scale[0]), int(q.zeroPoint[0]))

    arena, peak_at = _arena(model, graph, type_names)
    ops = graph.operators or []
    peak_op = "-"
    if 0 <= peak_at < len(ops):
        code = model.operatorCodes[ops[peak_at].opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        peak_op = f"{peak_at}:{op_names.get(builtin, builtin)}"
    return TfliteInfo(arena_bytes=arena, arena_peak_op=peak_op, operators=len(ops),
                      input_quantization=quantization(graph.inputs[0]),
                      output_quantization=quantization(graph.outputs[0]))


def _arena(model, graph, type_names: dict[int, str]) -> tuple[int, int]:
    """(peak bytes of live activation tensors, index of the operator where it occurs)."""
    ops = graph.operators or []
    n_ops = len(ops)

    def constant(index: int) -> bool:
        tensor = graph.tensors[index]
        buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers or []) else None
        has_data = buffer is not None and ((buffer.data is not None and len(buffer.data) > 0)
                                           or (buffer.offset or 0) > 1)
        return has_data or bool(tensor.isVariable)

    # An operator whose inputs are all constants (e.g. DEQUANTIZE of float16 weights) is folded
    # when the interpreter prepares the model: its output is a weight too, not an activation.
    folded: set[int] = set()
    for op in ops:
        inputs = [int(i) for i in (op.inputs if op.inputs is not None else ()) if i >= 0]
        if inputs and all(constant(i) or i in folded for i in inputs):
            folded.update(int(i) for i in (op.outputs if op.outputs is not None else ()))
    first: dict[int, int] = {int(i): -1 for i in graph.inputs}
    last: dict[int, int] = {int(i): n_ops for i in graph.outputs}
    for step, op in enumerate(ops):
        for i in (int(i) for i in (op.outputs if op.outputs is not None else ()) if i >= 0):
            first.setdefault(i, step)
        for i in (int(i) for i in (op.inputs if op.inputs is not None else ()) if i >= 0):
            last[i] = max(last.get(i, step), step)
    live = [i for i in set(first) | set(last) if not constant(i) and i not in folded]

    def size(index: int) -> int:
        tensor = graph.tensors[index]
        dims = [max(1, int(d)) for d in (tensor.shape if tensor.shape is not None else [])]
        return int(np.prod(dims, dtype=np.int64)) * _BITS.get(type_names.get(tensor.type, ""), 32) // 8

    peak, peak_at = 0, -1
    for step in range(n_ops):
        total = sum(size(i) for i in live if first.get(i, step) <= step <= last.get(i, step))
        if total > peak:
            peak, peak_at = total, step
    return peak, peak_at
