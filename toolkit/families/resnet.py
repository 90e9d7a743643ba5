"""Residual nets of basic blocks with BatchNorm (ResNet-style).

    stem:    3x3 conv, stride stem_stride -> BatchNorm -> ReLU
    stage i: blocks[i] basic blocks of width widths[i]; a block is conv-BN-ReLU-conv-BN plus the
             shortcut (a 1x1 conv + BN where the shape changes), added, then ReLU. The first block
             of stage 0 has stride first_stride, the first block of every later stage stride 2.
    head:    global average pooling (`embedding`), dropout, softmax
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from toolkit.families import stages as st
from toolkit.families.base import Family, check_choice, check_dropout, positive_ints
from toolkit.families.graph import conv_bn_relu, gap_head

STRIDES = (1, 2)


@dataclass(frozen=True)
class ResNetArch:
    widths: tuple[int, ...] = (16, 32, 64)
    blocks: tuple[int, ...] = (2, 2, 2)
    stem_filters: int = 16
    stem_stride: int = 1
    first_stride: int = 1
    dropout: float = 0.0


def basic_block(net, x, width: int, stride: int, *, in_width: int, name: str):
    y = conv_bn_relu(net, x, width, 3, stride=stride, name=f"{name}_conv1")
    y = conv_bn_relu(net, y, width, 3, relu=False, name=f"{name}_conv2")
    shortcut = x
    if stride != 1 or in_width != width:
        shortcut = net.conv(x, width, 1, stride=stride, bias=False, name=f"{name}_proj")
        shortcut = net.bn(shortcut, name=f"{name}_proj_bn")
    return net.relu(net.add(y, shortcut, name=f"{name}_add"), name=f"{name}_out")


def forward(arch: ResNetArch, net):
    x = conv_bn_relu(net, net.input(), arch.stem_filters, 3, stride=arch.stem_stride, name="stem")
    width = arch.stem_filters
    for i, (out, count) in enumerate(zip(arch.widths, arch.blocks, strict=True), start=1):
        for j in range(1, count + 1):
            stride = (arch.first_stride if i == 1 else 2) if j == 1 else 1
            x = basic_block(net, x, out, stride, in_width=width, name=f"s{i}b{j}")
            width = out
    return gap_head(net, x, dropout=arch.dropout)


def check(arch: ResNetArch) -> Iterable[str]:
    if not arch.widths or not positive_ints(arch.widths):
        yield ("widths must be a non-empty tuple of positive stage widths, e.g. (16, 32, 64); "
               f"got {arch.widths!r}")
    if len(arch.blocks) != len(arch.widths) or not positive_ints(arch.blocks):
        yield (f"blocks must give a positive block count for each of the {len(arch.widths)} stages; "
               f"got {arch.blocks!r}")
    if not positive_ints((arch.stem_filters,)):
        yield f"stem_filters must be a positive width, got {arch.stem_filters!r}"
    yield from check_choice(arch.stem_stride, STRIDES, "stem_stride")
    yield from check_choice(arch.first_stride, STRIDES, "first_stride")
    yield from check_dropout(arch.dropout)
    if arch.widths and arch.stem_stride in STRIDES and arch.first_stride in STRIDES:
        halves = len(arch.widths) - 1 + (arch.first_stride == 2)
        side = st.stem_side(arch.stem_stride)
        problem = st.too_many_downsamplings("widths", halves, side, "stride-2 stages")
        if problem:
            yield problem


def feature_maps(arch: ResNetArch) -> list[str]:
    return ["stem_relu"] + [f"s{i}b{n}_out" for i, n in enumerate(arch.blocks, start=1)]


def describe(arch: ResNetArch) -> str:
    strides = f"stem/{arch.stem_stride}"
    if arch.first_stride > 1:
        strides += f", first stage/{arch.first_stride}"
    stages = f"widths {list(arch.widths)} x blocks {list(arch.blocks)}"
    text = f"stem {arch.stem_filters}, {stages} ({strides}); GAP"
    return text + (f", dropout {arch.dropout:g}" if arch.dropout else "")


FAMILY = Family(
    name="ResNet", arch=ResNetArch, forward=forward, check=check, feature_maps=feature_maps,
    describe=describe, description="residual nets of basic blocks with BatchNorm, global average pooling",
)
