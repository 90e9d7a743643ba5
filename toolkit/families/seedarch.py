"""The architecture fields the seed study's DNN and CNN specs share, and their network.

The layers, their names and their order are exactly those the toolkit built before families
existed (conv_i/pool_i, flatten, dense_i, the last hidden dense layer named `embedding`,
dropout_i, probabilities), so seeded initialisation, and hence every completed run, is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from toolkit.families.base import positive_ints


@dataclass(frozen=True)
class SeedArch:
    dense_units: tuple[int, ...]
    dropout: tuple[float, ...]
    l2: tuple[float, ...]
    conv_filters: tuple[int, ...] = ()
    kernel_size: tuple[int, int] = (3, 3)
    conv_strides: int = 1
    pool_size: tuple[int, int] = (2, 2)
    pool_strides: int = 2


def forward(arch: SeedArch, net):
    x = net.input()
    for i, filters in enumerate(arch.conv_filters, start=1):
        x = net.conv(x, filters, arch.kernel_size[0], stride=arch.conv_strides, padding="valid",
                     activation="relu", name=f"conv_{i}")
        x = net.maxpool(x, arch.pool_size[0], stride=arch.pool_strides, name=f"pool_{i}")
    x = net.flatten(x, name="flatten")
    last = len(arch.dense_units)
    for i, (units, rate, l2) in enumerate(zip(arch.dense_units, arch.dropout, arch.l2, strict=True), start=1):
        x = net.dense(x, units, activation="relu", l2=l2, name="embedding" if i == last else f"dense_{i}")
        if rate:
            x = net.dropout(x, rate, name=f"dropout_{i}")
    return net.classifier(x)


def check_dense(arch: SeedArch) -> Iterable[str]:
    """The dense-layer fields both seed families share."""
    if not arch.dense_units or not positive_ints(arch.dense_units):
        yield f"dense_units must be positive integers, got {arch.dense_units}"
    if len(arch.dropout) != len(arch.dense_units):
        yield "dropout needs one rate per dense layer"
    if any(not 0.0 <= d < 1.0 for d in arch.dropout):
        yield f"dropout rates must be in [0, 1), got {arch.dropout}"
    if len(arch.l2) != len(arch.dense_units):
        yield "l2 needs one factor per dense layer"
    if any(f < 0 for f in arch.l2):
        yield f"l2 factors must be >= 0, got {arch.l2}"


def describe(arch: SeedArch) -> str:
    parts = [f"conv {list(arch.conv_filters)}"] if arch.conv_filters else []
    parts.append(f"dense {list(arch.dense_units)}")
    if any(arch.dropout):
        parts.append(f"dropout {[int(d * 100) for d in arch.dropout]}%")
    if any(arch.l2):
        parts.append("L2 " + str(["L2" if f else "-" for f in arch.l2]).replace("'", ""))
    return ", ".join(parts)
