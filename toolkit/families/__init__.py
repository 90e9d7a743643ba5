"""The one table of model families, read by every consumer by name.

    FAMILIES["ResNet"].counts(arch).params      # no TensorFlow
    FAMILIES["ResNet"].build(arch, name)        # a stock Keras model

Adding a family is one module (its architecture dataclass, checks and network; see base.py)
plus one entry here, or `register(family)` from outside the package (the tests register a
throwaway family that way). Names are matched case-insensitively; an unknown one is a usage
error listing the known ones.
"""

from __future__ import annotations

import difflib

from toolkit.core.errors import UsageError
from toolkit.families import bnconv, cnn, dnn, mobilenet, resnet
from toolkit.families.base import Family

FAMILIES: dict[str, Family] = {f.name: f for f in (dnn.FAMILY, cnn.FAMILY, bnconv.FAMILY, resnet.FAMILY,
                                                   mobilenet.FAMILY)}


def get_family(name: str) -> Family:
    for key, family in FAMILIES.items():
        if key.lower() == str(name).lower():
            return family
    close = difflib.get_close_matches(str(name), FAMILIES, n=1, cutoff=0.5)
    hint = f" (closest: {close[0]})" if close else ""
    raise UsageError(f"unknown model family {name!r}{hint}; allowed: {', '.join(FAMILIES)}")


def register(family: Family) -> Family:
    """Add a family to the table (a second family of the same name is refused)."""
    if any(key.lower() == family.name.lower() for key in FAMILIES):
        raise UsageError(f"a model family named {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    FAMILIES.pop(get_family(name).name)


__all__ = ["FAMILIES", "Family", "get_family", "register", "unregister"]
