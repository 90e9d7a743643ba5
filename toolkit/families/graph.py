"""One architecture description, two interpreters: counting (no TensorFlow) and building (Keras).

A family writes its network once, as `forward(arch, net)`, calling the small vocabulary below
(conv, depthwise, bn, relu, maxpool, gap, flatten, dense, dropout, add). Run on a `Tally`, it
walks shapes and counts parameters and multiply-adds without importing TensorFlow (what
`toolkit list`, bench and report need); run on a `KerasNet`, the same calls create stock Keras
layers with the same names, so the counts and the built model cannot drift apart (a test checks
every family's counts against `model.count_params()` and the built layers' shapes anyway).

Counting rules (the issue's): FLOPs = 2 x multiply-adds of conv, depthwise and dense layers;
BatchNorm, activations, pooling and additions are not counted. Parameters are every weight the
Keras model holds, BatchNorm's moving statistics included (what `count_params` reports).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from toolkit.core.contract import IMAGE_SHAPE, INPUT_NAME, NUM_CLASSES, OUTPUT_NAME

PADDINGS = ("same", "valid")


class Shrinks(ValueError):
    """A layer would shrink its input below 1x1 (the architecture is impossible)."""

    def __init__(self, layer: str, side: int, kernel: int) -> None:
        super().__init__(f"layer {layer!r} gets a {side}x{side} map, too small for its "
                         f"{kernel}x{kernel} window")
        self.layer = layer


def out_side(side: int, kernel: int, stride: int, padding: str) -> int:
    """Output side of a conv or pool window, as Keras computes it."""
    if padding == "same":
        return math.ceil(side / stride)
    return (side - kernel) // stride + 1


@dataclass
class Shape:
    """What the Tally knows about a tensor: a map (side x side x channels) or a vector (units)."""

    side: int | None
    channels: int

    @property
    def units(self) -> int:
        return self.channels * (self.side or 1) ** 2


@dataclass
class Counts:
    params: int = 0
    macs: int = 0
    embedding_size: int = 0
    layers: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)  # (name, kind, output shape)

    @property
    def mflops(self) -> float:
        return 2 * self.macs / 1e6


class Tally:
    """Counts parameters and multiply-adds, and checks every window fits its input."""

    def __init__(self) -> None:
        self.counts = Counts()

    def _record(self, name: str | None, kind: str, shape: Shape) -> Shape:
        dims = (shape.side, shape.side, shape.channels) if shape.side is not None else (shape.channels,)
        self.counts.layers.append((name or kind, kind, dims))
        if name == "embedding":
            self.counts.embedding_size = shape.units
        return shape

    def input(self) -> Shape:
        return Shape(IMAGE_SHAPE[0], IMAGE_SHAPE[2])

    def _window(self, x: Shape, kernel: int, stride: int, padding: str, name: str | None) -> int:
        side = out_side(x.side, kernel, stride, padding)
        if side < 1 or (padding == "valid" and x.side < kernel):
            raise Shrinks(name or "?", x.side, kernel)
        return side

    def conv(self, x: Shape, filters: int, kernel: int, *, stride: int = 1, padding: str = "same",
             bias: bool = True, activation: str | None = None, l2: float = 0.0,
             name: str | None = None) -> Shape:
        side = self._window(x, kernel, stride, padding, name)
        self.counts.params += kernel * kernel * x.channels * filters + (filters if bias else 0)
        self.counts.macs += side * side * kernel * kernel * x.channels * filters
        return self._record(name, "conv", Shape(side, filters))

    def depthwise(self, x: Shape, kernel: int, *, stride: int = 1, padding: str = "same",
                  bias: bool = True, name: str | None = None) -> Shape:
        side = self._window(x, kernel, stride, padding, name)
        self.counts.params += kernel * kernel * x.channels + (x.channels if bias else 0)
        self.counts.macs += side * side * kernel * kernel * x.channels
        return self._record(name, "depthwise", Shape(side, x.channels))

    def bn(self, x: Shape, *, name: str | None = None) -> Shape:
        self.counts.params += 4 * x.channels  # gamma, beta, moving mean, moving variance
        return self._record(name, "bn", x)

    def relu(self, x: Shape, *, name: str | None = None) -> Shape:
        return self._record(name, "relu", x)

    def maxpool(self, x: Shape, size: int = 2, *, stride: int = 2, padding: str = "valid",
                name: str | None = None) -> Shape:
        side = self._window(x, size, stride, padding, name)
        return self._record(name, "pool", Shape(side, x.channels))

    def gap(self, x: Shape, *, name: str | None = None) -> Shape:
        return self._record(name, "gap", Shape(None, x.channels))

    def flatten(self, x: Shape, *, name: str | None = None) -> Shape:
        return self._record(name, "flatten", Shape(None, x.units))

    def dense(self, x: Shape, units: int, *, activation: str | None = None, l2: float = 0.0,
              name: str | None = None) -> Shape:
        self.counts.params += x.units * units + units
        self.counts.macs += x.units * units
        return self._record(name, "dense", Shape(None, units))

    def dropout(self, x: Shape, rate: float, *, name: str | None = None) -> Shape:
        return x

    def add(self, a: Shape, b: Shape, *, name: str | None = None) -> Shape:
        return self._record(name, "add", a)

    def classifier(self, x: Shape) -> Shape:
        return self.dense(x, NUM_CLASSES, activation="softmax", name=OUTPUT_NAME)


class KerasNet:
    """Creates stock Keras layers for the same calls (imports Keras when constructed)."""

    def __init__(self) -> None:
        from toolkit.core.tf import keras

        self.keras = keras
        self.layers = keras.layers
        self.inputs = None

    def input(self):
        self.inputs = self.keras.Input(shape=IMAGE_SHAPE, name=INPUT_NAME, dtype="float32")
        return self.inputs

    def _l2(self, factor: float):
        return self.keras.regularizers.L2(factor) if factor else None

    def conv(self, x, filters, kernel, *, stride=1, padding="same", bias=True, activation=None, l2=0.0,
             name=None):
        return self.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=bias,
                                  activation=activation, kernel_regularizer=self._l2(l2), name=name)(x)

    def depthwise(self, x, kernel, *, stride=1, padding="same", bias=True, name=None):
        return self.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=bias,
                                           name=name)(x)

    def bn(self, x, *, name=None):
        return self.layers.BatchNormalization(name=name)(x)

    def relu(self, x, *, name=None):
        return self.layers.ReLU(name=name)(x)

    def maxpool(self, x, size=2, *, stride=2, padding="valid", name=None):
        return self.layers.MaxPooling2D(size, strides=stride, padding=padding, name=name)(x)

    def gap(self, x, *, name=None):
        return self.layers.GlobalAveragePooling2D(name=name)(x)

    def flatten(self, x, *, name=None):
        return self.layers.Flatten(name=name)(x)

    def dense(self, x, units, *, activation=None, l2=0.0, name=None):
        return self.layers.Dense(units, activation=activation, kernel_regularizer=self._l2(l2), name=name)(x)

    def dropout(self, x, rate, *, name=None):
        return self.layers.Dropout(rate, name=name)(x)

    def add(self, a, b, *, name=None):
        return self.layers.Add(name=name)([a, b])

    def classifier(self, x):
        # float32 under every mixed-precision policy: the softmax and the loss need its range.
        return self.layers.Dense(NUM_CLASSES, activation="softmax", name=OUTPUT_NAME, dtype="float32")(x)


Forward = Callable[[Any, Any], Any]  # forward(arch, net) -> the output tensor


def tally(forward: Forward, arch: Any) -> Counts:
    """Counts of `forward` on `arch`; raises Shrinks when a window does not fit."""
    net = Tally()
    forward(arch, net)
    return net.counts


def build(forward: Forward, arch: Any, name: str):
    """The Keras model of `forward` on `arch`, named `name`."""
    net = KerasNet()
    outputs = forward(arch, net)
    return net.keras.Model(net.inputs, outputs, name=name)


def conv_bn_relu(net, x, filters: int, kernel: int = 3, *, stride: int = 1, padding: str = "same",
                 relu: bool = True, name: str):
    """Conv (no bias: BatchNorm's beta replaces it) -> BatchNorm -> ReLU, named name, name_bn, name_relu."""
    x = net.conv(x, filters, kernel, stride=stride, padding=padding, bias=False, name=name)
    x = net.bn(x, name=f"{name}_bn")
    return net.relu(x, name=f"{name}_relu") if relu else x


HEADS = ("gap", "flatten")


def gap_head(net, x, *, hidden_units: int = 0, dropout: float = 0.0, pooling: str = "gap"):
    """Global average pooling (or Flatten), an optional dense layer, dropout, softmax. The
    `embedding` layer is the dense layer when there is one, else the pooled (flattened) vector."""
    reduce = net.gap if pooling == "gap" else net.flatten
    if hidden_units:
        x = reduce(x, name="pool")
        if dropout:
            x = net.dropout(x, dropout, name="pool_dropout")
        x = net.dense(x, hidden_units, activation="relu", name="embedding")
    else:
        x = reduce(x, name="embedding")
    if dropout:
        x = net.dropout(x, dropout, name="dropout")
    return net.classifier(x)
