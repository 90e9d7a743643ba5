"""What a model family is: its architecture fields, their checks, its counts, its Keras model.

    Family(name="ResNet", arch=ResNetArch, forward=forward, check=check, ...)

- `arch`: a frozen dataclass of the family's architecture fields (a spec carries one);
- `check(arch)`: every problem, each one line naming the field and the allowed values (an
  impossible net, e.g. one that shrinks 28x28 below 1x1, is a problem, found before training);
- `forward(arch, net)`: the network, written once for toolkit.families.graph's two interpreters,
  so the counts (no TensorFlow) and the Keras model come from the same description;
- `feature_maps(arch)`: the layers the analyses draw as feature maps (empty: the analyses draw a
  scatter of two embedding units instead, as for the seed's DNNs);
- `describe(arch)`: a short text for `toolkit list`.

Every model keeps the contract: input `image`, output `probabilities`, a layer named `embedding`,
stock Keras layers only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from toolkit.families import graph
from toolkit.families.graph import Counts, Shrinks


@dataclass(frozen=True)
class Family:
    name: str
    arch: type  # the frozen dataclass of this family's architecture fields
    forward: graph.Forward
    check: Callable[[Any], Iterable[str]]
    feature_maps: Callable[[Any], list[str]]
    describe: Callable[[Any], str]
    description: str = ""
    _cache: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def problems(self, arch: Any) -> list[str]:
        """Every problem of `arch` for this family; the counts run only on a sound one."""
        if not isinstance(arch, self.arch):
            wanted, got = self.arch.__name__, type(arch).__name__
            return [f"arch: family {self.name} takes a {wanted} architecture, got {got}"]
        found = list(self.check(arch))
        if not found:
            try:
                self.counts(arch)
            except Shrinks as exc:
                found.append(f"{self.name}: {exc}; the net shrinks 28x28 below its windows")
        return found

    def counts(self, arch: Any) -> Counts:
        """Parameters, multiply-adds and embedding size, from the architecture alone."""
        if arch not in self._cache:
            self._cache[arch] = graph.tally(self.forward, arch)
        return self._cache[arch]

    def build(self, arch: Any, name: str):
        """The Keras model (imports Keras)."""
        return graph.build(self.forward, arch, name)

    def summary(self, arch: Any) -> dict[str, Any]:
        """The architecture fields as they enter a run's manifest."""
        return dataclasses.asdict(arch)


def positive_ints(values: Iterable[Any]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def check_dropout(rate: float, field_name: str = "dropout") -> Iterable[str]:
    if not 0.0 <= rate < 1.0:
        yield f"{field_name} must be in [0, 1), got {rate}"


def check_choice(value: Any, allowed: tuple[Any, ...], field_name: str) -> Iterable[str]:
    if value not in allowed:
        yield f"{field_name} must be one of {', '.join(map(str, allowed))}; got {value!r}"
