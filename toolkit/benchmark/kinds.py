"""Case kinds: what the driver needs to know to place and run each kind of benchmark case.

A kind answers, for its cases:
- `place(case, env)`: run here, in a worker process (cases with equal `group` share one), or
  skip (and why). `env` says what this process can do (CUDA, TensorFlow and its thread count);
- `run(case, ctx, timer=..., cases=...)`: measure one case in this process -> a result;
- `finish(result, peaks)`: add what needs the whole run (the share of the measured peak);
- `read(doc, path)` / `write(root, ...)`: its results, from a worker's output and to its file
  under ARTIFACTS/bench/ (each kind writes files of its own `kind`).

Kinds: "inference" (a model file on a runtime) and "training" (one training step of a spec
in a mixed-precision mode: toolkit.benchmark.training; TensorFlow, so a worker per thread count,
like Keras inference). Planned ones plug in here without touching the driver: memory and
cold-start cases (each in a fresh process: group=(case.id,)), repeated measurements in separate
processes (group=(case.id, repeat)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from toolkit.benchmark.plan import INFERENCE, KERAS_RUNTIMES, TRAINING, BenchCase
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


KINDS: dict[str, CaseKind] = {INFERENCE: InferenceKind(), TRAINING: TrainingKind()}


def kind_of(case: BenchCase) -> CaseKind:
    try:
        return KINDS[case.kind]
    except KeyError:
        raise UsageError(f"{case.id}: unknown benchmark case kind {case.kind!r}; known: "
                         f"{', '.join(KINDS)}") from None
