"""The seed study's fully connected nets: Flatten, dense layers with dropout and L2, softmax."""

from __future__ import annotations

from collections.abc import Iterable

from toolkit.families import seedarch
from toolkit.families.base import Family
from toolkit.families.seedarch import SeedArch


def check(arch: SeedArch) -> Iterable[str]:
    if arch.conv_filters:
        yield "conv_filters: a DNN spec has none (allowed: (); use family CNN for conv layers)"
    yield from seedarch.check_dense(arch)


FAMILY = Family(
    name="DNN", arch=SeedArch, forward=seedarch.forward, check=check,
    feature_maps=lambda arch: [], describe=seedarch.describe,
    description="the seed's fully connected nets (Flatten, dense + dropout/L2, softmax)",
)
