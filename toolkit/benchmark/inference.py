"""The inference kind: a model file on a runtime, device, batch and thread count; latency and
throughput. Its runner prepares outside the clock, warms up, times and checks every call's output.

How a case is timed:
- the session or interpreter is built, the inputs prepared (and, on GPU, copied to the device;
  for an int8-I/O file, quantized) before the clock starts; warm-up calls follow, checked like
  every other call;
- each timed call is one `run` on one batch, read with `time.perf_counter` around the call only
  (GPU calls synchronize inside that span, so the clock never stops before the device does);
- every call's output is checked outside the timed span: shape [N,10], finite values, and for
  trained models the top-1 class against the reference (Keras, or the ONNX float32 export where
  TensorFlow is absent) on the images of that call. A runtime that fails this posts no time;
- p50/p90/p99 come from the raw per-call timings (toolkit.benchmark.timing).

Its results file is toolkit.benchmark.inference_results.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import runtimes
from toolkit.benchmark.context import BenchContext, configure_tf_threads, reference_key
from toolkit.benchmark.inference_results import InferenceResult
from toolkit.benchmark.placement import HERE, SKIP, Environment, Placement, place_tensorflow, runtime_skip
from toolkit.benchmark.plan import INFERENCE, KERAS_RUNTIMES, BenchCase
from toolkit.benchmark.timing import Timer, TimingStats, own_timer, plan_rounds
from toolkit.core.errors import ParityError, UsageError
from toolkit.core.machine import load_average
from toolkit.core.records import now

MAX_FLIP_RATE = 0.10  # more top-1 disagreements than this over a case: the runtime is broken


class OutputCheckError(ParityError):
    """A benchmarked call returned non-finite values or the wrong classes."""


class OutputChecker:
    """Checks each call's output outside the timed span; a broken runtime raises, never times."""

    def __init__(self, case: BenchCase, inputs: list[np.ndarray], reference: np.ndarray | None) -> None:
        self.case = case
        self.n_inputs = len(inputs)
        self.reference = reference
        self.calls = 0
        self.compared = 0
        self.mismatches = 0

    def check(self, index: int, output: Any) -> None:
        out = np.asarray(output)
        # The declared shapes passed the contract check at load time; this is the computed one.
        runtimes.check_output(self.case.path, out, batch=self.case.batch)
        if not np.all(np.isfinite(out)):
            bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
            raise OutputCheckError(
                f"{self.case.id}: {bad} non-finite output values (NaN/inf); "
                "a broken runtime posts no time. Re-export the model and rerun"
            )
        self.calls += 1
        if self.reference is None:
            return
        if self.case.batch == 1:
            ref = self.reference[index % self.n_inputs : index % self.n_inputs + 1]
        else:
            n = min(len(self.reference), self.case.batch)
            ref, out = self.reference[:n], out[:n]
        self.compared += len(ref)
        self.mismatches += int(np.count_nonzero(np.argmax(out[: len(ref)], axis=1) != ref))
        # Fail early on a clearly broken runtime; the end-of-case verdict uses the whole count.
        if self.compared >= 16 and self.mismatches > MAX_FLIP_RATE * self.compared + 1:
            self.finish()

    def finish(self) -> dict[str, Any]:
        if self.reference is not None and self.compared and self.mismatches > MAX_FLIP_RATE * self.compared:
            raise OutputCheckError(
                f"{self.case.id}: top-1 disagrees with the reference on {self.mismatches}/{self.compared} "
                f"checked images (limit {MAX_FLIP_RATE:.0%}); a broken runtime posts no time. "
                "Check parity with `toolkit export` and rerun"
            )
        return {
            "calls_checked": self.calls,
            "top1_compared": self.compared,
            "top1_mismatches": self.mismatches if self.reference is not None else None,
            "top1_checked": self.reference is not None,
        }


# ---------------------------------------------------------------- one case


@dataclass
class Prepared:
    """A loaded model with its inputs and the two functions the clock wraps or not."""

    case: BenchCase
    model: runtimes.LoadedModel
    inputs: list[np.ndarray]
    call: Callable[[int], Any]  # timed: run input i (and synchronize, on GPU)
    fetch: Callable[[Any], np.ndarray]  # untimed: the call's result as host numpy
    checker: OutputChecker
    notes: dict[str, Any] = field(default_factory=dict)


def prepare(case: BenchCase, ctx: BenchContext, cases: Sequence[BenchCase] = ()) -> Prepared:
    if case.runtime in KERAS_RUNTIMES:
        threads = ctx.keras_threads or configure_tf_threads(case.threads)
        ctx.keras_threads = threads
        if threads != case.threads:
            raise UsageError(
                f"{case.id}: TensorFlow in this process runs {threads} threads, not "
                f"{case.threads}; it fixes the count once per process (run it in a worker)"
            )
    model = runtimes.load(case.path, case.runtime, device=case.device, threads=case.threads)
    inputs = ctx.batch_inputs(case.batch)
    checker = OutputChecker(case, inputs, ctx.reference(case, cases))
    notes: dict[str, Any] = {"provider": model.provider}
    if case.device == "gpu":
        from toolkit.benchmark.gpu import prepare_gpu

        call, fetch = prepare_gpu(case=case, model=model, inputs=inputs, notes=notes)
        return Prepared(case, model, inputs, call, fetch, checker, notes)
    if model.quantized_io:
        # An int8-I/O file is fed int8 images, as on a microcontroller: quantized here, outside the
        # clock, and its int8 output dequantized after it, for the check (toolkit.runtimes).
        encoded = [model.encode(batch) for batch in inputs]
        notes["io_encoding"] = "int8 input/output: quantized before timing, dequantized after"
        return Prepared(case, model, inputs, lambda i: model.run_encoded(encoded[i % len(encoded)]),
                        model.decode, checker, notes)
    return Prepared(case, model, inputs, lambda i: model.run(inputs[i % len(inputs)]), lambda out: out,
                    checker, notes)


def warm_up(prep: Prepared, *, min_calls: int = 5, max_calls: int = 50, seconds: float = 0.3) -> list[float]:
    """Checked warm-up calls; returns their durations (to plan the timed rounds)."""
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < min_calls or (i < max_calls and time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        out = prep.call(i)
        times.append(time.perf_counter() - t0)
        prep.checker.check(i, prep.fetch(out))
        i += 1
    return times


def run_case(case: BenchCase, ctx: BenchContext, *, timer: Timer = own_timer,
             cases: Sequence[BenchCase] = ()) -> InferenceResult:
    """Prepare, warm up, time and check one case.

    `timer(target, after, rounds)` returns raw per-call seconds (None when timing is disabled,
    e.g. pytest --benchmark-disable, which still runs and checks the calls).
    """
    from toolkit.specs import get_spec

    prep = prepare(case, ctx, cases)
    warm = warm_up(prep)
    rounds = plan_rounds(warm, ctx.seconds)
    state = {"i": len(warm), "out": None}

    def target() -> None:
        state["out"] = prep.call(state["i"])

    def after() -> None:
        prep.checker.check(state["i"], prep.fetch(state["out"]))
        state["i"] += 1

    raw = timer(target, after, rounds)
    check = prep.checker.finish()
    # What the runtime says it ran, once it has run this batch size (OpenVINO picks some kernels
    # at the first call of a shape): the precision it computes, its settings, its kernels' ISA.
    prep.notes.update(prep.model.run_facts())
    spec = get_spec(case.spec)
    return InferenceResult(
        case=case, timed=raw is not None, warmup_calls=len(warm), params=spec.param_count(),
        mflops_per_image=spec.mflops_per_image(), inputs=ctx.inputs_source,
        reference=ctx.reference_source.get(reference_key(case)), check=check, versions=ctx.versions,
        measured_at=now(), tf_threads=ctx.keras_threads if case.runtime in KERAS_RUNTIMES else None,
        load_avg_1m=load_average(), notes=prep.notes, pid=os.getpid(),
        stats=None if raw is None else TimingStats.from_times(raw, batch=case.batch, what=case.id),
    )


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
            return runtime_skip(case) or Placement(HERE)
        return place_tensorflow(case, env)

    def run(self, case: BenchCase, ctx: Any, *, timer: Any, cases: Sequence[BenchCase]) -> Any:
        return run_case(case, ctx, timer=timer, cases=cases)

    def finish(self, result: Any, peaks: dict[str, Any] | None) -> None:
        from toolkit.benchmark.peaks import pct_of_peak, peak_for, peak_kind

        if result.stats is None:
            return
        kind = peak_kind(result.case.runtime, result.notes.get("computes") or result.case.precision)
        peak = peak_for(peaks, result.case.precision, result.case.threads, runtime=result.case.runtime,
                        computes=result.notes.get("computes"))
        if peak and result.stats.images_per_s:
            result.peak_g_per_s, result.notes["peak_kind"] = peak, kind
            result.pct_of_peak = pct_of_peak(mflops_per_image=result.mflops_per_image,
                                             images_per_s=result.stats.images_per_s, peak=peak)

    def read(self, doc: dict[str, Any], *, path: Path | None) -> Any:
        return InferenceResult.from_dict(doc, path=path or Path("<benchmark worker output>"))

    def write(self, root: Path, *, source: str, results: list[Any], peaks: dict[str, Any] | None,
              extra: dict[str, Any]) -> Path:
        from toolkit.benchmark.inference_results import BenchRun, write_run

        return write_run(root, BenchRun(source=source, results=results, peaks=peaks, extra=extra))
