"""BatchNorm conv nets with global average pooling (VGG-style stages).

    stem (optional): conv k x k, stride s -> BatchNorm -> ReLU
    stage i:         3x3 conv -> BatchNorm -> ReLU for each width; between stages the map is halved
                     by a 2x2 max pool ("maxpool") or by the stage's first conv at stride 2 ("stride")
    head:            global average pooling (or Flatten: pooling="flatten") (`embedding`), optional
                     dense (then that is `embedding`), dropout, softmax
An empty stage only pools: with a stem, ((), (64,)) is stem -> pool -> 64 and ((64,), ()) is
stem -> 64 -> pool (then the head).

A strided or patchify stem (e.g. 4x4 at stride 4: 28x28 -> 7x7) makes the fast nets: on int8
XNNPACK a stride-1 conv over the full 28x28 input costs ~30 us alone, whatever its width.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from toolkit.families import stages as st
from toolkit.families.base import Family, check_choice, check_dropout, positive_ints
from toolkit.families.graph import HEADS, conv_bn_relu, gap_head

DOWNSAMPLE = ("maxpool", "stride")
STEM_STRIDES = (1, 2, 4)


@dataclass(frozen=True)
class BNConvArch:
    stages: tuple[tuple[int, ...], ...]  # conv widths per stage, e.g. ((16,), (32,), (64,))
    stem_filters: int = 0  # 0: no stem; the first stage's first conv sees the image
    stem_kernel: int = 3
    stem_stride: int = 1
    downsample: str = "maxpool"
    hidden_units: int = 0  # a dense layer after pooling (0: the pooled vector is the embedding)
    dropout: float = 0.0
    pooling: str = "gap"  # "gap" (global average pooling) or "flatten"


def forward(arch: BNConvArch, net):
    x = net.input()
    if arch.stem_filters:
        x = conv_bn_relu(net, x, arch.stem_filters, arch.stem_kernel, stride=arch.stem_stride, name="stem")
    for i, widths in enumerate(arch.stages, start=1):
        if i > 1 and arch.downsample == "maxpool":
            x = net.maxpool(x, 2, stride=2, padding="same", name=f"s{i}_pool")
        for j, width in enumerate(widths, start=1):
            stride = 2 if (i > 1 and j == 1 and arch.downsample == "stride") else 1
            x = conv_bn_relu(net, x, width, 3, stride=stride, name=f"s{i}_conv{j}")
    return gap_head(net, x, hidden_units=arch.hidden_units, dropout=arch.dropout, pooling=arch.pooling)


def check(arch: BNConvArch) -> Iterable[str]:
    def may_be_empty(i: int) -> bool:  # a stem alone at full size; a later stage that only pools
        return bool(arch.stem_filters) if i == 0 else arch.downsample == "maxpool"

    ok = bool(arch.stages) and all(isinstance(s, tuple) and positive_ints(s) and (s or may_be_empty(i))
                                   for i, s in enumerate(arch.stages))
    if not ok:
        yield ("stages must be a non-empty tuple of stages, each a tuple of positive conv widths (empty: "
               "the first after a stem, a later one that only max-pools), e.g. ((16,), (32,), (64,)); "
               f"got {arch.stages!r}")
    if not (isinstance(arch.stem_filters, int) and arch.stem_filters >= 0):
        yield f"stem_filters must be 0 (no stem) or a positive width, got {arch.stem_filters!r}"
    if arch.stem_filters:
        yield from check_choice(arch.stem_stride, STEM_STRIDES, "stem_stride")
        if arch.stem_kernel not in range(1, 8):
            yield f"stem_kernel must be one of 1..7, got {arch.stem_kernel!r}"
    elif (arch.stem_stride, arch.stem_kernel) != (1, 3):
        yield "stem_stride/stem_kernel need a stem: set stem_filters > 0 (allowed without a stem: 1 and 3)"
    yield from check_choice(arch.downsample, DOWNSAMPLE, "downsample")
    yield from check_choice(arch.pooling, HEADS, "pooling")
    if not (isinstance(arch.hidden_units, int) and arch.hidden_units >= 0):
        yield f"hidden_units must be 0 (none) or a positive width, got {arch.hidden_units!r}"
    yield from check_dropout(arch.dropout)
    if arch.stages and arch.stem_stride in STEM_STRIDES:
        side = st.stem_side(arch.stem_stride if arch.stem_filters else 1)
        problem = st.too_many_downsamplings("stages", len(arch.stages) - 1, side, "stage transitions")
        if problem:
            yield problem


def feature_maps(arch: BNConvArch) -> list[str]:
    names = ["stem_relu"] if arch.stem_filters else []
    return names + [f"s{i}_conv{len(w)}_relu" for i, w in enumerate(arch.stages, start=1) if w]


def describe(arch: BNConvArch) -> str:
    parts = []
    if arch.stem_filters:
        parts.append(f"stem {arch.stem_filters} {arch.stem_kernel}x{arch.stem_kernel}/{arch.stem_stride}")
    parts.append("stages " + " | ".join(",".join(map(str, s)) or "-" for s in arch.stages)
                 + f" ({arch.downsample})")
    head = "GAP" if arch.pooling == "gap" else "Flatten"
    head += f", dense {arch.hidden_units}" if arch.hidden_units else ""
    parts.append(head + (f", dropout {arch.dropout:g}" if arch.dropout else ""))
    return "; ".join(parts)


FAMILY = Family(
    name="BNConv", arch=BNConvArch, forward=forward, check=check, feature_maps=feature_maps,
    describe=describe,
    description="BatchNorm conv nets with global average pooling (VGG-style stages, optional strided stem)",
)
