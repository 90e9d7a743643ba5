"""Where a benchmark case runs, and what a case kind answers (toolkit.benchmark.kinds holds the
registry of kinds; each kind is one module: inference, memory, training).

A kind answers, for its cases:
- `place(case, env)`: run here, in a worker process (cases with equal `group` share one), or
  skip (and why). `env` says what this process can do (CUDA, TensorFlow and its thread count);
- `run(case, ctx, timer=..., cases=...)`: measure one case in this process -> a result;
- `finish(result, peaks)`: add what needs the whole run (the share of the measured peak);
- `read(doc, path)` / `write(root, ...)`: its results, from a worker's output and to its file
  under ARTIFACTS/bench/ (each kind writes files of its own `kind`, through the one bench
  envelope of toolkit.core.records).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from toolkit.benchmark.plan import BenchCase
from toolkit.core.errors import ToolkitError

HERE, WORKER, SKIP = "here", "worker", "skip"


@dataclass(frozen=True)
class Placement:
    where: str  # HERE | WORKER | SKIP
    group: tuple = ()  # WORKER: cases with equal groups run in one worker process, in order
    tf_threads: int | None = None  # WORKER: TensorFlow's thread count, set before anything runs
    label: str = ""  # WORKER: what the progress display says while the group runs
    reason: str = ""  # SKIP: why, in one line


def runtime_skip(case: BenchCase) -> Placement | None:
    """A CPU case on a runtime this machine cannot run (its package missing, or what it needs
    absent: openvino-bf16 on a CPU without native bf16) is skipped with the reason, as a GPU
    case without CUDA is; the other runtimes' cases still run."""
    from toolkit import runtimes

    if case.device != "cpu":
        return None
    why = runtimes.get_runtime(case.runtime).unavailable_reason()
    return Placement(SKIP, reason=why) if why else None


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


def place_tensorflow(case: BenchCase, env: Environment) -> Placement:
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
