"""What `toolkit tune` judges from a spec alone, before any training: parameters and MFLOPs
(counted exactly), and estimates of the full-integer TFLite file (tflite-int8io) and of the
tensor arena a firmware reserves for it (TFLM's measured minimum plus the CMSIS-NN scratch margin,
what toolkit.core.boards.McuBudget compares), calibrated against TFLM-measured files.

The family's network is run on a recorder (toolkit.families.graph's counting interpreter, which
also notes each TFLite operator the converter makes of it: conv + BatchNorm + ReLU fold into one
CONV_2D, dropout vanishes), so no TensorFlow is needed:

- file bytes = the int8 weights + PER_CHANNEL bytes per output channel of a conv or dense layer
  (the int32 bias and the per-channel quantization) + PER_TENSOR per tensor (its name, shape and
  quantization) + FIXED (the signature, metadata and flatbuffer structure);
- arena = the peak of the int8 activations alive at once (each 16-byte aligned, as TFLM plans
  them; a residual's skip stays alive across its block) + the persistent part
  (toolkit.runtimes.tflite_info's model of TFLM's structures) + the largest CMSIS-NN im2col buffer.

CALIBRATION states how far the estimates were from TFLM's measurements (tools/tune_calibration.py
measures them again): before training a candidate is rejected only when even its estimate less
that error exceeds the budget, so an estimate never rejects a candidate that would fit, and every
candidate that trains is judged again on its measured file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from toolkit.core.contract import NUM_CLASSES, OUTPUT_NAME
from toolkit.families.graph import Shape, Tally
from toolkit.runtimes import tflite_info
from toolkit.specs import Spec

KIB = 1024
# The file model's constants: a least-squares fit of (file bytes - int8 weights) on output channels,
# tensors and a constant over the 13 int8io files of tools/tune_calibration.py (BNConv, MobileNet,
# ResNet and DNN nets of 1,490 to 421,930 parameters). Tensor names and shapes make most of the
# per-tensor bytes.
PER_CHANNEL = 25
PER_TENSOR = 174
FIXED = 418
# How far the estimates were from the measured files, estimate / measured - 1: the file's
# leave-one-out errors (each file predicted by the constants fitted on the other 12; in-sample
# -2.9% to +2.3%), the arena's errors (no constant of its own is fitted: it was below TFLM's
# figure on every file, by up to 8.5% where a large Flatten or dense layer dominates).
CALIBRATION: dict[str, dict[str, float | int]] = {
    "flash": {"lowest": -0.043, "highest": 0.037, "files": 13},
    "arena": {"lowest": -0.085, "highest": -0.003, "files": 13},
}
CALIBRATED_WITH = "tflite-micro 0.dev20261023182759 (host build), tensorflow 2.20 converter"
# Beyond the calibration set's largest overestimate: nets unlike those 13 may be estimated worse.
SAFETY = 0.05


@dataclass
class _Op:
    kind: str
    inputs: list[int]
    output: int
    weights: int = 0
    channels: int = 0
    scratch: int = 0


@dataclass
class Graph:
    """The TFLite operators a spec's network becomes, with its int8 activation tensors."""

    sizes: list[int] = field(default_factory=list)  # bytes of each activation tensor (int8)
    ops: list[_Op] = field(default_factory=list)

    @property
    def weighted(self) -> list[_Op]:
        return [op for op in self.ops if op.weights]

    @property
    def tensors(self) -> int:
        """Every tensor of the file: activations, each weighted operator's weights and bias, and
        the axis or shape constant of MEAN and RESHAPE."""
        constants = sum(op.kind in ("MEAN", "RESHAPE") for op in self.ops)
        return len(self.sizes) + 2 * len(self.weighted) + constants


class _Recorder(Tally):
    """Counts as Tally does, and records the operators and tensors TFLite makes of the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.graph = Graph()
        self._ids: dict[int, int] = {}
        self._shapes: list[Shape] = []  # alive for the whole walk, so no id() is ever reused

    def _tensor(self, shape: Shape) -> int:
        """A tensor is a Shape object: BatchNorm, ReLU and dropout hand back the one they got
        (fused into the operator before them), every operator makes a new one."""
        if id(shape) not in self._ids:
            self._ids[id(shape)] = len(self.graph.sizes)
            self._shapes.append(shape)
            self.graph.sizes.append(shape.units)
        return self._ids[id(shape)]

    def _op(self, kind: str, inputs: list[Shape], out: Shape, **facts: int) -> Shape:
        ins = [self._tensor(x) for x in inputs]
        self.graph.ops.append(_Op(kind, ins, self._tensor(out), **facts))
        return out

    def input(self) -> Shape:
        shape = super().input()
        self._tensor(shape)
        return shape

    def conv(self, x: Shape, filters: int, kernel: int, **kw) -> Shape:
        out = super().conv(x, filters, kernel, **kw)
        # CMSIS-NN's arm_convolve_s8 scratch: two im2col columns of int16
        return self._op("CONV_2D", [x], out, weights=kernel * kernel * x.channels * filters, channels=filters,
                        scratch=2 * x.channels * kernel * kernel * 2)

    def depthwise(self, x: Shape, kernel: int, **kw) -> Shape:
        out = super().depthwise(x, kernel, **kw)
        return self._op("DEPTHWISE_CONV_2D", [x], out, weights=kernel * kernel * x.channels,
                        channels=x.channels, scratch=x.channels * kernel * kernel * 2)

    def dense(self, x: Shape, units: int, **kw) -> Shape:
        out = super().dense(x, units, **kw)
        return self._op("FULLY_CONNECTED", [x], out, weights=x.units * units, channels=units)

    def maxpool(self, x: Shape, size: int = 2, **kw) -> Shape:
        return self._op("MAX_POOL_2D", [x], super().maxpool(x, size, **kw))

    def gap(self, x: Shape, **kw) -> Shape:
        return self._op("MEAN", [x], super().gap(x, **kw))

    def flatten(self, x: Shape, **kw) -> Shape:
        return self._op("RESHAPE", [x], super().flatten(x, **kw))

    def add(self, a: Shape, b: Shape, **kw) -> Shape:
        return self._op("ADD", [a, b], Shape(a.side, a.channels))

    def classifier(self, x: Shape) -> Shape:
        logits = self.dense(x, NUM_CLASSES, name=OUTPUT_NAME)
        return self._op("SOFTMAX", [logits], Shape(None, logits.channels))


def graph_of(spec: Spec) -> Graph:
    recorder = _Recorder()
    spec.family_entry.forward(spec.arch, recorder)
    return recorder.graph


@dataclass(frozen=True)
class Estimate:
    """A spec's figures before training: exact counts, estimated file and arena."""

    params: int
    mflops: float
    flash_bytes: int  # tflite-int8io, estimated
    arena_bytes: int  # TFLM minimum + CMSIS-NN scratch, estimated
    scratch_bytes: int

    def low(self, figure: str) -> float:
        """The smallest value the measured figure can take by the calibration: the estimate less
        its largest overestimate there (none: 0) and SAFETY."""
        value = {"flash": self.flash_bytes, "arena": self.arena_bytes}[figure]
        return value * (1 - max(float(CALIBRATION[figure]["highest"]), 0.0) - SAFETY)


def estimate(spec: Spec) -> Estimate:
    g = graph_of(spec)
    weighted, tensors = g.weighted, g.tensors
    flash = (sum(op.weights for op in weighted) + PER_CHANNEL * sum(op.channels for op in weighted)
             + PER_TENSOR * tensors + FIXED)
    scratch = _align(max((op.scratch for op in g.ops), default=0))
    persistent = (tflite_info.EVAL_TENSOR * tensors + (tflite_info.NODE + tflite_info.OP_DATA) * len(g.ops)
                  + tflite_info.IO_TENSORS + tflite_info.PER_CHANNEL * sum(op.channels for op in weighted)
                  + tflite_info.FIXED)
    arena = _align(_peak(g) + persistent) + scratch
    return Estimate(spec.param_count(), spec.mflops_per_image(), int(flash), int(arena), scratch)


def _align(n: int) -> int:
    return -(-n // 16) * 16


def _peak(g: Graph) -> int:
    """The largest sum of aligned activation bytes alive at one operator (a tensor lives from the
    operator that makes it to the last that reads it; the input from the start, the output to the end)."""
    first = {0: -1}
    last: dict[int, int] = {}
    for step, op in enumerate(g.ops):
        first.setdefault(op.output, step)
        for i in op.inputs:
            last[i] = max(last.get(i, step), step)
    if g.ops:
        last[g.ops[-1].output] = len(g.ops)
    peak = 0
    for step in range(len(g.ops)):
        alive = [t for t in first if first[t] <= step <= last.get(t, first[t])]
        peak = max(peak, sum(_align(g.sizes[t]) for t in alive))
    return peak
