"""The one benchmark driver, called by `toolkit bench` (toolkit/cli/bench.py, through `measure`) and
by `pytest bench/` (bench/conftest.py) alike:

    session = BenchSession.open(BenchRequest(root=..., formats=["onnx"], source="cli"))
    outcomes = run_benchmarks(session)           # pytest: run_benchmarks(session, cases=[case], timer=...)
    paths = session.close()                      # the results files under ROOT/bench/

It owns every rule the two callers share: planning (with the fresh-clone fallback of untrained
models), where each case runs (here, in a worker process, or skipped with the reason: a GPU case
without CUDA, a Keras case without TensorFlow or at a thread count this process cannot run),
the grouping of worker processes, the matmul peaks (measured once, outside every case's clock)
and the results file, which keeps every result measured before a failure (a worker that dies,
a Ctrl-C). Case kinds (toolkit.benchmark.kinds) decide placement and running, so kinds added
later (training steps) need no change here. Repeats: each case is measured `repeats` times,
each time in another process (toolkit.benchmark.kinds.for_repeat), so its results give an
interval that includes the drift between processes.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from toolkit.benchmark.context import BenchContext, configure_tf_threads, tensorflow_available
from toolkit.benchmark.kinds import for_repeat, kind_of
from toolkit.benchmark.peaks import measure_peaks
from toolkit.benchmark.placement import HERE, SKIP, CaseOutcome, Placement
from toolkit.benchmark.plan import (
    CASE_KINDS,
    DEFAULT_SECONDS,
    FALLBACK_ORIGIN,
    INFERENCE,
    MEMORY,
    TIME_TO_ACCURACY,
    TRAINING,
    BenchCase,
    Filters,
    parse_batches,
    parse_devices,
    parse_threads,
    plan_cases,
    plan_fallback_cases,
)
from toolkit.benchmark.timing import Timer, own_timer
from toolkit.benchmark.worker import WorkerDied, run_in_worker
from toolkit.core import artifacts
from toolkit.core.errors import (
    ArtifactError,
    DeviceUnavailableError,
    PartialFailure,
    ToolkitError,
    UsageError,
)
from toolkit.core.machine import cuda_available
from toolkit.runtimes.base import RuntimeUnavailableError


@dataclass
class BenchRequest:
    """What the user asked for (CLI options or pytest --bench-* options, unparsed)."""

    root: Path | None = None
    exps: Sequence[str] | None = None
    formats: Sequence[str] | None = None
    runtime_keys: Sequence[str] | None = None
    device: str | None = "all"  # "gpu" makes a missing CUDA provider an error, not a skip
    batches: Sequence[str | int] | None = None
    threads: Sequence[str | int] | None = None
    seconds: float = DEFAULT_SECONDS
    # None: Keras cases of each thread count run in a worker process (toolkit bench). N: this
    # process runs TensorFlow at N threads and Keras cases at other counts are skipped (pytest).
    keras_threads: int | None = None
    fallback: bool = False  # nothing to plan: build untrained default specs in a temp folder
    source: str = "cli"
    kinds: Sequence[str] = (INFERENCE,)  # and/or TRAINING: spec x precision x batch training steps
    train_exps: Sequence[str] | None = None  # training cases (toolkit.benchmark.training defaults)
    train_precisions: Sequence[str] | None = None
    train_batches: Sequence[str | int] | None = None
    # Each case of a repeatable kind is measured this many times, each time in another process
    # (intervals need at least 2; the CLI's default is 3, pytest's 1).
    repeats: int = 1
    memory: bool = False  # also plan memory cases (peak RSS, load time, first call)
    # Time to accuracy (toolkit.benchmark.time_to_accuracy): the specs of `exps`, each seed trained
    # (or its completed run reused, unless `fresh`), checked against `threshold`.
    seeds: int = 3
    threshold: float | None = None
    fresh: bool = False
    mixed_precision: str | None = None
    epochs: int | None = None  # fewer epochs / images: quick checks only
    limit_train: int | None = None


class BenchSession:
    """One benchmark run: its plan, shared context, peaks, outcomes and results files."""

    def __init__(self, request: BenchRequest) -> None:
        self.request = request
        self.root = artifacts.resolve_root(request.root)
        self.thread_counts = parse_threads(request.threads)
        if not isinstance(request.repeats, int) or request.repeats < 1:
            raise UsageError(f"repeats must be an integer >= 1, got {request.repeats!r} (3 gives a 95% "
                             "interval from three processes)")
        self.repeats = request.repeats
        unknown = sorted(set(request.kinds) - set(CASE_KINDS))
        if unknown:
            raise UsageError(f"unknown benchmark kind(s) {unknown}; known: {', '.join(CASE_KINDS)}")
        # Memory cases measure the same files as inference cases: they come with inference.
        kinds = (INFERENCE, MEMORY) if request.memory else (INFERENCE,)
        if INFERENCE not in request.kinds:
            kinds = ()
        if TIME_TO_ACCURACY in request.kinds and not request.exps:
            raise UsageError("--kind time-to-accuracy trains specs: name them with --exp")
        self.filters = Filters(exps=request.exps, formats=request.formats, runtime_keys=request.runtime_keys,
                               devices=parse_devices(request.device), batches=parse_batches(request.batches),
                               threads=self.thread_counts, kinds=kinds)
        self.seconds = request.seconds
        self.keras_threads = request.keras_threads
        self.cuda = cuda_available()
        self.tensorflow = tensorflow_available()
        self.fallback_dir: Path | None = None
        self.cases: list[BenchCase] = self._plan_inference() + self._plan_training() + self._plan_t2a()
        self.outcomes: list[CaseOutcome] = []
        self.peaks: dict[str, Any] | None = None
        self.written: list[Path] = []
        self._ctx: BenchContext | None = None
        self._built: dict[str, dict[str, str]] = {}
        self._closed = False

    def _plan_inference(self) -> list[BenchCase]:
        if not self.filters.kinds:
            return []
        cases = plan_cases(self.root, self.filters)
        if not cases and self.request.fallback:
            self.fallback_dir = Path(tempfile.mkdtemp(prefix="toolkit-bench-"))
            cases = plan_fallback_cases(self.fallback_dir, self.filters)
        return cases

    def _plan_training(self) -> list[BenchCase]:
        if TRAINING not in self.request.kinds:
            return []
        from toolkit.benchmark.training import plan_training_cases

        # Training uses every core TensorFlow is given: one count, this process' if fixed.
        threads = self.keras_threads or max(self.thread_counts)
        return plan_training_cases(self.request.train_exps, precisions=self.request.train_precisions,
                                   batches=self.request.train_batches, threads=threads)

    def _plan_t2a(self) -> list[BenchCase]:
        if TIME_TO_ACCURACY not in self.request.kinds:
            return []
        from toolkit.benchmark import time_to_accuracy

        r = self.request
        return time_to_accuracy.plan_cases(r.exps, seeds=r.seeds, threads=self.keras_threads or
                                           max(self.thread_counts), threshold=r.threshold,
                                           mixed_precision=r.mixed_precision, epochs=r.epochs,
                                           limit_train=r.limit_train, fresh=r.fresh)

    @classmethod
    def open(cls, request: BenchRequest) -> BenchSession:
        """Plan a run; bad options are UsageErrors, an explicit GPU request without CUDA is a
        DeviceUnavailableError, and nothing to benchmark is an ArtifactError."""
        session = cls(request)
        if not session.cases:
            session.close()
            raise ArtifactError(
                f"nothing to benchmark under {session.root} for these filters: train and export first "
                "(toolkit train, toolkit export), or widen --exp/--format/--runtime")
        session._require_named_runtimes()
        if (request.device or "").lower() == "gpu" and not session.cuda:
            session.close()
            import onnxruntime as ort

            raise DeviceUnavailableError(
                f"--device gpu: ONNX Runtime has no CUDA provider here (providers: "
                f"{', '.join(ort.get_available_providers())}); install the `gpu` extra on an NVIDIA host")
        return session

    def _require_named_runtimes(self) -> None:
        """A runtime named with --runtime whose package is missing is one line with its install
        command (exit 6, like a missing GPU); unnamed ones are skipped case by case instead."""
        from toolkit import runtimes

        for key in self.filters.runtime_keys or ():
            for name in (k.strip().lower() for k in str(key).split(",") if k.strip()):
                runtime = runtimes.get_runtime(name)
                if "cpu" in runtime.devices and (why := runtime.unavailable_reason()):
                    self.close()
                    raise RuntimeUnavailableError(f"--runtime {name}: {why}")

    # ------------------------------------------------------------ what the kinds ask about

    def placement(self, case: BenchCase) -> Placement:
        if self.fallback_dir is not None and not self.tensorflow:
            return Placement(SKIP, reason="no exports under the artifacts root and no TensorFlow here to "
                                          "build the fallback models; export on a host with TensorFlow and "
                                          "copy artifacts/")
        return for_repeat(kind_of(case).place(case, self), case, self.repeats)

    def measurements(self, cases: Sequence[BenchCase] | None = None, *,
                     timing: bool = True) -> list[BenchCase]:
        """`cases` (default: every planned case) once per repeat, repeat-major so that the
        repeats of a case are spread over the run. Without timing, only repeat 0 (a check run)."""
        chosen = list(self.cases if cases is None else cases)
        rounds = self.repeats if timing else 1
        return [c.with_repeat(r) for r in range(rounds) for c in chosen
                if r == 0 or kind_of(c).repeatable]

    # ------------------------------------------------------------ shared state

    def context(self) -> BenchContext:
        """The inputs and references every in-process case shares. In pytest mode TensorFlow's
        thread count is set first, before anything touches TensorFlow."""
        if self._ctx is None:
            tf_threads = None
            needs_tf = any(kind_of(c).needs_tensorflow(c) for c in self.cases) or self.fallback_dir
            if self.keras_threads is not None and self.tensorflow and needs_tf:
                tf_threads = configure_tf_threads(self.keras_threads)
            self._ctx = BenchContext.create(self.root, seconds=self.seconds)
            self._ctx.keras_threads = tf_threads
        return self._ctx

    def measure_peaks(self) -> dict[str, Any]:
        if self.peaks is None:
            self.peaks = measure_peaks(self.thread_counts, {c.runtime for c in self.cases})
        return self.peaks

    def ensure_files(self, case: BenchCase) -> None:
        """Fallback mode: build and export the untrained spec of `case` once, before its first case."""
        if self.fallback_dir is None or case.origin != FALLBACK_ORIGIN:
            return
        from toolkit.benchmark.fallback import build_fallback

        if case.spec not in self._built:
            keys = sorted({c.key for c in self.cases if c.spec == case.spec and c.origin == FALLBACK_ORIGIN})
            self.context()  # TensorFlow's thread count is set before the build touches TF
            self._built[case.spec] = build_fallback(case.spec, self.fallback_dir, keys)
        status = self._built[case.spec].get(case.key, "not built")
        if status != "ok":
            raise ArtifactError(f"exporting untrained {case.spec} to {case.key} failed: {status}")

    def record(self, outcome: CaseOutcome) -> CaseOutcome:
        if outcome.result is not None:
            kind_of(outcome.case).finish(outcome.result, self.peaks)
        self.outcomes.append(outcome)
        return outcome

    @property
    def results(self) -> list[Any]:
        return [o.result for o in self.outcomes if o.result is not None]

    def close(self) -> list[Path]:
        """Write the timed results (one file per kind) and remove the fallback folder. Safe to
        call more than once; what was measured before an error or Ctrl-C is written too."""
        if self._closed:
            return self.written
        self._closed = True
        timed = [r for r in self.results if r.timed]
        by_kind: dict[str, list[Any]] = {}
        for result in timed:
            by_kind.setdefault(result.case.kind, []).append(result)
        extra = {}
        if self.request.fallback:  # pytest says whether it measured its own untrained models
            extra["fallback_dir"] = str(self.fallback_dir) if self.fallback_dir else None
        for results in by_kind.values():
            self.written.append(kind_of(results[0].case).write(
                self.root, source=self.request.source, results=results, peaks=self.peaks, extra=extra))
        if self.fallback_dir is not None:
            shutil.rmtree(self.fallback_dir, ignore_errors=True)
        return self.written


Start = Callable[[str], None]  # a description of what starts now (a case id, a worker group)
Done = Callable[[CaseOutcome], None]


def run_benchmarks(session: BenchSession, *, cases: Sequence[BenchCase] | None = None,
                   timer: Timer = own_timer, timing: bool = True, on_start: Start | None = None,
                   on_done: Done | None = None) -> list[CaseOutcome]:
    """Run `cases` (default: every planned case) and return one outcome per case; a case that
    fails (a ToolkitError) is an outcome too, and the others go on. With `timing`, the matmul
    peaks are measured first (once per session) so results state their share of the peak."""
    chosen = session.measurements(cases, timing=timing)
    here: list[BenchCase] = []
    groups: dict[tuple, tuple[Placement, list[BenchCase]]] = {}
    outcomes: list[CaseOutcome] = []

    def done(outcome: CaseOutcome) -> None:
        outcomes.append(session.record(outcome))
        if on_done:
            on_done(outcome)

    for case in chosen:
        placement = session.placement(case)
        if placement.where == SKIP:
            done(CaseOutcome(case, skipped=placement.reason))
        elif placement.where == HERE:
            here.append(case)
        else:
            groups.setdefault(placement.group, (placement, []))[1].append(case)
    if timing and any(kind_of(c).uses_peaks for c in [*here, *(c for _, m in groups.values() for c in m)]):
        if on_start:
            on_start("measuring matmul peaks")
        session.measure_peaks()
    for case in here:
        if on_start:
            on_start(case.id)
        done(_run_here(session, case, timer))
    for placement, members in groups.values():
        if on_start:
            on_start(placement.label)
        _run_group(session, placement, members, done)
    return outcomes


def _run_here(session: BenchSession, case: BenchCase, timer: Timer) -> CaseOutcome:
    try:
        session.ensure_files(case)
        ctx = session.context()
        return CaseOutcome(case, result=kind_of(case).run(case, ctx, timer=timer, cases=session.cases))
    except ToolkitError as exc:
        return CaseOutcome(case, error=exc)


def _run_group(session: BenchSession, placement: Placement, members: list[BenchCase],
               done: Callable[[CaseOutcome], None]) -> None:
    # The Keras top-1 references this process already computed: a repeat worker of ONNX Runtime
    # and LiteRT cases then checks its outputs without importing TensorFlow itself.
    known = session._ctx.references if session._ctx is not None else {}
    references = {spec: None if ref is None else ref.tolist() for spec, ref in known.items()}
    try:
        run_in_worker(members, root=session.root, seconds=session.seconds, tf_threads=placement.tf_threads,
                      label=placement.label or "benchmark worker", on_outcome=done, references=references)
    except WorkerDied as exc:
        finished = {o.case.id for o in exc.outcomes}
        for case in members:
            if case.id not in finished:
                done(CaseOutcome(case, error=exc))


# ---------------------------------------------------------------- one whole run


class BenchView(Protocol):
    """What the caller shows while a run measures (the CLI: an announcement and a progress bar)."""

    def measuring(self, session: BenchSession, planned: int) -> contextlib.AbstractContextManager[
            tuple[Start, Done]]: ...


@dataclass
class BenchOutcome:
    session: BenchSession
    outcomes: list[CaseOutcome]
    written: list[Path]
    planned: int

    @property
    def results(self) -> list[Any]:
        return [o.result for o in self.outcomes if o.result is not None]

    @property
    def skipped(self) -> dict[str, int]:
        """Skip reason -> number of cases skipped for it."""
        out: dict[str, int] = {}
        for o in self.outcomes:
            if o.skipped:
                out[o.skipped] = out.get(o.skipped, 0) + 1
        return out

    @property
    def failures(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.error is not None]

    def raise_for_failures(self) -> None:
        if self.failures:
            raise PartialFailure(f"{len(self.failures)} of {self.planned} benchmark measurements failed "
                                 "(listed above); the others were recorded")


def measure(request: BenchRequest, view: BenchView | None = None) -> BenchOutcome:
    """Plan, run and record a whole benchmark run (what `toolkit bench` and the pipeline's bench
    stage do); whatever was measured is written, even after a failure or Ctrl-C."""
    session = BenchSession.open(request)
    planned = session.measurements()
    try:
        measuring = view.measuring(session, len(planned)) if view else contextlib.nullcontext((None, None))
        with measuring as hooks:
            outcomes = run_benchmarks(session, on_start=hooks[0], on_done=hooks[1])
    finally:
        written = session.close()
    return BenchOutcome(session, outcomes, written, len(planned))
