"""Case kinds: what the driver needs to know to place and run each kind of benchmark case.

A kind answers, for its cases:
- `place(case, env)`: run here, in a worker process (cases with equal `group` share one), or
  skip (and why). `env` says what this process can do (CUDA, TensorFlow and its thread count);
- `run(case, ctx, timer=..., cases=...)`: measure one case in this process -> a result;
- `finish(result, peaks)`: add what needs the whole run (the share of the measured peak);
- `read(doc, path)` / `write(root, ...)`: its results, from a worker's output and to its file
  under ARTIFACTS/bench/ (each kind writes files of its own `kind`).

Kinds: "inference" (latency and throughput), "memory" (peak RSS, load time, first call:
each case starts its own fresh child process, so it runs "here" and the child isolates it)
and "training" (one training step of a spec in a mixed-precision mode:
toolkit.benchmark.training; TensorFlow, so a worker per thread count, like Keras inference).
Repeats: the driver measures each case of a `repeatable` kind `repeats` times, each repeat in
another process (repeat 0 where the kind places it, repeat r in a worker of its own, see
`for_repeat`), so its results carry the drift between processes. A kind that is `isolated`
(each run already a fresh process) keeps its placement for every repeat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from toolkit.benchmark.plan import INFERENCE, KERAS_RUNTIMES, MEMORY, TRAINING, BenchCase
from toolkit.errors import ToolkitError, UsageError

HERE, WORKER, SKIP = "here", "worker", "skip"


@dataclass(frozen=True)
class Placement:
    where: str  # HERE | WORKER | SKIP
    group: tuple = ()  # WORKER: cases with equal groups run in one worker process, in order
    tf_threads: int | None = None  # WORKER: TensorFlow's thread count, set before anything runs
    label: str = ""  # WORKER: what the progress display says while the group runs
    reason: str = ""  # SKIP: why, in one line


@dataclass
class CaseOutcome:
    """One case of a run: its result, or why it was skipped, or the error that stopped it."""

    case: BenchCase
    result: Any = None
    skipped: str | None = None
    error: ToolkitError | None = None


class Environment(Protocol):
    cuda: bool  # ONNX Runtime has a CUDA execution provider here
    tensorflow: bool  # TensorFlow is installed here
    keras_threads: int | None  # None: Keras cases go to workers; N: this process runs TF at N threads


class CaseKind(Protocol):
    name: str
    repeatable: bool  # measured once per repeat (each in another process)
    isolated: bool  # run() already starts a fresh process: repeats keep the kind's placement
    uses_peaks: bool  # its results state a share of the machine's measured matmul peaks

    def needs_tensorflow(self, case: BenchCase) -> bool: ...

    def place(self, case: BenchCase, env: Environment) -> Placement: ...

    def run(self, case: BenchCase, ctx: Any, *, timer: Any, cases: Sequence[BenchCase]) -> Any: ...

    def finish(self, result: Any, peaks: dict[str, Any] | None) -> None: ...

    def read(self, doc: dict[str, Any], *, path: Path | None) -> Any: ...

    def write(self, root: Path, *, source: str, results: list[Any], peaks: dict[str, Any] | None,
              extra: dict[str, Any]) -> Path: ...


class InferenceKind:
    """A model file on a runtime, device, batch and thread count: latency and throughput."""

    name = INFERENCE
    repeatable = True
    isolated = False
    uses_peaks = True

    def needs_tensorflow(self, case: BenchCase) -> bool:
        return case.runtime in KERAS_RUNTIMES or case.trained  # trained: the Keras reference

    def place(self, case: BenchCase, env: Environment) -> Placement:
        if case.device == "gpu" and not env.cuda:
            return Placement(SKIP, reason="no CUDA execution provider in ONNX Runtime here; install the "
                                          "`gpu` extra on an NVIDIA host")
        if case.runtime not in KERAS_RUNTIMES:
            return Placement(HERE)
        return _place_tensorflow(case, env)

    def run(self, case: BenchCase, ctx: Any, *, timer: Any, cases: Sequence[BenchCase]) -> Any:
        from toolkit.benchmark.engine import run_case

        return run_case(case, ctx, timer=timer, cases=cases)

    def finish(self, result: Any, peaks: dict[str, Any] | None) -> None:
        from toolkit.benchmark.peaks import pct_of_peak, peak_for

        if result.stats is None:
            return
        peak = peak_for(peaks, result.case.precision, result.case.threads)
        if peak and result.stats.images_per_s:
            result.peak_g_per_s = peak
            result.pct_of_peak = pct_of_peak(mflops_per_image=result.mflops_per_image,
                                             images_per_s=result.stats.images_per_s, peak=peak)

    def read(self, doc: dict[str, Any], *, path: Path | None) -> Any:
        from toolkit.benchmark.results import InferenceResult

        return InferenceResult.from_dict(doc, path=path or Path("<benchmark worker output>"))

    def write(self, root: Path, *, source: str, results: list[Any], peaks: dict[str, Any] | None,
              extra: dict[str, Any]) -> Path:
        from toolkit.benchmark.results import BenchRun, write_run

        return write_run(root, BenchRun(source=source, results=results, peaks=peaks, extra=extra))


def _place_tensorflow(case: BenchCase, env: Environment) -> Placement:
    """TensorFlow cases: a worker per thread count, or here at this process' fixed count."""
    if not env.tensorflow:
        return Placement(SKIP, reason="TensorFlow is not installed here (ONNX Runtime/LiteRT cases "
                                      "still run)")
    if env.keras_threads is None:  # TensorFlow fixes its thread count once per process
        return Placement(WORKER, group=("tensorflow", case.threads), tf_threads=case.threads,
                         label=f"Keras cases, TensorFlow at {case.threads} threads (subprocess)")
    if case.threads != env.keras_threads:
        return Placement(SKIP, reason=(
            f"TensorFlow fixes its thread count once per process and this one runs {env.keras_threads}; "
            f"use --bench-keras-threads {case.threads}, or `toolkit bench`, which runs each count in "
            "its own process"))
    return Placement(HERE)


class TrainingKind:
    """One training step of a spec in a mixed-precision mode and batch size: images/s."""

    name = TRAINING
    repeatable = False  # images/s of a step; its seconds-long cases are not repeated
    isolated = False
    uses_peaks = False

    def needs_tensorflow(self, case: BenchCase) -> bool:
        return True

    def place(self, case: BenchCase, env: Environment) -> Placement:
        from toolkit.benchmark.training import mode_of
        from toolkit.precision import resolve

        if not env.tensorflow:
            return _place_tensorflow(case, env)
        try:
            resolve(mode_of(case))
        except UsageError as exc:  # timing TensorFlow's emulation of a missing type says nothing
            return Placement(SKIP, reason=exc.message)
        return _place_tensorflow(case, env)

    def run(self, case: BenchCase, ctx: Any, *, timer: Any, cases: Sequence[BenchCase]) -> Any:
        from toolkit.benchmark.training import run_training_case

        return run_training_case(case, timer=timer, seconds=ctx.seconds, tf_threads=ctx.keras_threads)

    def finish(self, result: Any, peaks: dict[str, Any] | None) -> None:
        return None

    def read(self, doc: dict[str, Any], *, path: Path | None) -> Any:
        from toolkit.benchmark.training import TrainingResult

        return TrainingResult.from_dict(doc, path=path or Path("<benchmark worker output>"))

    def write(self, root: Path, *, source: str, results: list[Any], peaks: dict[str, Any] | None,
              extra: dict[str, Any]) -> Path:
        from toolkit.benchmark.training import TrainingRun, write_training_run

        return write_training_run(root, TrainingRun(source=source, results=results))


class MemoryKind:
    """A model file on a runtime (CPU): peak RSS serving batch 1 and the large batch, load time,
    first-call latency, and the two baselines, in a fresh child that imports only that runtime."""

    name = MEMORY
    repeatable = True
    isolated = True
    uses_peaks = False

    def needs_tensorflow(self, case: BenchCase) -> bool:
        return case.runtime in KERAS_RUNTIMES

    def place(self, case: BenchCase, env: Environment) -> Placement:
        if case.device != "cpu":
            return Placement(SKIP, reason="memory is measured on CPU only: a GPU's memory is not in the "
                                          "process's resident set")
        if case.runtime in KERAS_RUNTIMES and not env.tensorflow:
            return Placement(SKIP, reason="TensorFlow is not installed here (ONNX Runtime/LiteRT memory "
                                          "cases still run)")
        return Placement(HERE)

    def run(self, case: BenchCase, ctx: Any, *, timer: Any, cases: Sequence[BenchCase]) -> Any:
        from toolkit.benchmark.memory import measure

        return measure(case, ctx.images)

    def finish(self, result: Any, peaks: dict[str, Any] | None) -> None:
        return None

    def read(self, doc: dict[str, Any], *, path: Path | None) -> Any:
        from toolkit.benchmark.memory import MemoryResult

        return MemoryResult.from_dict(doc, path=path or Path("<memory child output>"))

    def write(self, root: Path, *, source: str, results: list[Any], peaks: dict[str, Any] | None,
              extra: dict[str, Any]) -> Path:
        from toolkit.benchmark.memory import write_memory_run

        return write_memory_run(root, source=source, results=results)


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


KINDS: dict[str, CaseKind] = {INFERENCE: InferenceKind(), TRAINING: TrainingKind(), MEMORY: MemoryKind()}


def kind_of(case: BenchCase) -> CaseKind:
    try:
        return KINDS[case.kind]
    except KeyError:
        raise UsageError(f"{case.id}: unknown benchmark case kind {case.kind!r}; known: "
                         f"{', '.join(KINDS)}") from None
