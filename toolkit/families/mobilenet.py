"""Depthwise-separable nets (MobileNet-style), for small devices.

    stem:  3x3 conv, stride stem_stride -> BatchNorm -> ReLU
    block: 3x3 depthwise conv (stride 1 or 2) -> BN -> ReLU -> 1x1 conv to the block's width -> BN -> ReLU
    head:  global average pooling (`embedding`), dropout, softmax

A depthwise-separable block costs about 1/9 of the multiply-adds of a full 3x3 conv of the same
width. (Training them is slow on CPU: TensorFlow's depthwise backward pass is.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from toolkit.families import stages as st
from toolkit.families.base import Family, check_choice, check_dropout, positive_ints
from toolkit.families.graph import conv_bn_relu, gap_head

STRIDES = (1, 2)


@dataclass(frozen=True)
class MobileNetArch:
    blocks: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))  # (width, stride)
    stem_filters: int = 32
    stem_stride: int = 1
    dropout: float = 0.0


def forward(arch: MobileNetArch, net):
    x = conv_bn_relu(net, net.input(), arch.stem_filters, 3, stride=arch.stem_stride, name="stem")
    for i, (width, stride) in enumerate(arch.blocks, start=1):
        x = net.depthwise(x, 3, stride=stride, bias=False, name=f"b{i}_dw")
        x = net.relu(net.bn(x, name=f"b{i}_dw_bn"), name=f"b{i}_dw_relu")
        x = conv_bn_relu(net, x, width, 1, name=f"b{i}_pw")
    return gap_head(net, x, dropout=arch.dropout)


def check(arch: MobileNetArch) -> Iterable[str]:
    ok = bool(arch.blocks) and all(isinstance(b, tuple) and len(b) == 2 for b in arch.blocks)
    if not ok or not positive_ints(b[0] for b in arch.blocks):
        yield ("blocks must be a non-empty tuple of (width, stride) pairs, e.g. ((64, 1), (128, 2)); "
               f"got {arch.blocks!r}")
        ok = False
    elif any(b[1] not in STRIDES for b in arch.blocks):
        strides = [b[1] for b in arch.blocks]
        yield f"blocks: each stride must be one of {', '.join(map(str, STRIDES))}; got {strides}"
        ok = False
    if not positive_ints((arch.stem_filters,)):
        yield f"stem_filters must be a positive width, got {arch.stem_filters!r}"
    yield from check_choice(arch.stem_stride, STRIDES, "stem_stride")
    yield from check_dropout(arch.dropout)
    if ok and arch.stem_stride in STRIDES:
        halves = sum(b[1] == 2 for b in arch.blocks)
        side = st.stem_side(arch.stem_stride)
        problem = st.too_many_downsamplings("blocks", halves, side, "stride-2 blocks")
        if problem:
            yield problem


def feature_maps(arch: MobileNetArch) -> list[str]:
    ends = [i for i, (_, stride) in enumerate(arch.blocks[1:], start=1) if stride == 2]
    return ["stem_relu"] + [f"b{i}_pw_relu" for i in (*ends, len(arch.blocks))]


def describe(arch: MobileNetArch) -> str:
    blocks = " ".join(f"{w}{'/2' if s == 2 else ''}" for w, s in arch.blocks)
    text = f"stem {arch.stem_filters}/{arch.stem_stride}, dw-sep blocks {blocks}; GAP"
    return text + (f", dropout {arch.dropout:g}" if arch.dropout else "")


FAMILY = Family(
    name="MobileNet", arch=MobileNetArch, forward=forward, check=check, feature_maps=feature_maps,
    describe=describe, description="depthwise-separable nets (MobileNet-style) with global average pooling",
)
