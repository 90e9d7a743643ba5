"""The seed study's conv nets: conv/max-pool pairs, Flatten, dense layers with dropout, softmax."""

from __future__ import annotations

from collections.abc import Iterable

from toolkit.core.contract import IMAGE_SHAPE
from toolkit.families import seedarch
from toolkit.families.base import Family, positive_ints
from toolkit.families.graph import out_side
from toolkit.families.seedarch import SeedArch


def max_conv_layers(arch: SeedArch) -> int:
    """How many conv/pool pairs a 28x28 image can go through with these windows."""
    side, layers = IMAGE_SHAPE[0], 0
    while layers < IMAGE_SHAPE[0]:  # 1x1 windows never shrink the map: any count would fit
        side = out_side(side, arch.kernel_size[0], arch.conv_strides, "valid")
        if side < arch.pool_size[0]:
            return layers
        side = out_side(side, arch.pool_size[0], arch.pool_strides, "valid")
        layers += 1
    return layers


def check(arch: SeedArch) -> Iterable[str]:
    if not arch.conv_filters or not positive_ints(arch.conv_filters):
        yield f"conv_filters: a CNN spec needs at least one positive filter count, got {arch.conv_filters}"
    for name in ("kernel_size", "pool_size"):
        window = getattr(arch, name)
        if len(window) != 2 or window[0] != window[1] or not positive_ints(window):
            yield f"{name} must be a square window such as (3, 3), got {window}"
    if not positive_ints((arch.conv_strides, arch.pool_strides)):
        yield f"conv_strides and pool_strides must be positive, got {arch.conv_strides}, {arch.pool_strides}"
    yield from seedarch.check_dense(arch)
    windows = (*arch.kernel_size, *arch.pool_size, arch.conv_strides, arch.pool_strides)
    if arch.conv_filters and positive_ints(windows):
        allowed = max_conv_layers(arch)
        if len(arch.conv_filters) > allowed:
            yield (f"conv_filters: {len(arch.conv_filters)} conv/pool layers shrink 28x28 below 1x1; "
                   f"allowed: at most {allowed} with {arch.kernel_size} kernels and {arch.pool_size} pools")


def feature_maps(arch: SeedArch) -> list[str]:
    return [n for i in range(1, len(arch.conv_filters) + 1) for n in (f"conv_{i}", f"pool_{i}")]


FAMILY = Family(
    name="CNN", arch=SeedArch, forward=seedarch.forward, check=check, feature_maps=feature_maps,
    describe=seedarch.describe,
    description="the seed's conv nets (conv 3x3 + max-pool pairs, Flatten, dense + dropout, softmax)",
)
