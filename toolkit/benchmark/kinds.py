"""The registry of benchmark case kinds, one module each, read by key:

    inference  toolkit.benchmark.inference: latency and throughput of a file on a runtime
    memory     toolkit.benchmark.memory: peak RSS, load time and first call, in a fresh child
    training   toolkit.benchmark.training: one training step of a spec in a mixed-precision mode
    time-to-accuracy  toolkit.benchmark.time_to_accuracy: a whole training per seed, its wall time
               and its final model's test accuracy against a threshold

Repeats: the driver measures each case of a `repeatable` kind `repeats` times, each repeat in
another process (repeat 0 where the kind places it, repeat r in a worker of its own, see
`for_repeat`), so its results carry the drift between processes. A kind that is `isolated`
(each run already a fresh process) keeps its placement for every repeat.
"""

from __future__ import annotations

from toolkit.benchmark.inference import InferenceKind
from toolkit.benchmark.memory import MemoryKind
from toolkit.benchmark.placement import SKIP, WORKER, CaseKind, Placement
from toolkit.benchmark.plan import INFERENCE, MEMORY, TIME_TO_ACCURACY, TRAINING, BenchCase
from toolkit.benchmark.time_to_accuracy import TimeToAccuracyKind
from toolkit.benchmark.training import TrainingKind
from toolkit.core.errors import UsageError

KINDS: dict[str, CaseKind] = {INFERENCE: InferenceKind(), TRAINING: TrainingKind(), MEMORY: MemoryKind(),
                              TIME_TO_ACCURACY: TimeToAccuracyKind()}


def kind_of(case: BenchCase) -> CaseKind:
    try:
        return KINDS[case.kind]
    except KeyError:
        raise UsageError(f"{case.id}: unknown benchmark case kind {case.kind!r}; known: "
                         f"{', '.join(KINDS)}") from None


def for_repeat(placement: Placement, case: BenchCase, repeats: int) -> Placement:
    """Where repeat `case.repeat` of a case goes: repeat 0 where its kind placed it; a later
    repeat of a non-isolated kind in a worker process of its own (one worker per repeat and
    per the kind's group, so cases of one repeat share it), never in this process again."""
    kind = kind_of(case)
    if case.repeat == 0 or placement.where == SKIP or kind.isolated:
        return placement
    what = placement.label or "ONNX Runtime and LiteRT cases (subprocess)"
    label = f"repeat {case.repeat + 1}/{repeats}: {what}"
    return Placement(WORKER, group=(*placement.group, "repeat", case.repeat), tf_threads=placement.tf_threads,
                     label=label)
