"""Running one case: prepare outside the clock, warm up, time, check every call's output.

    ctx = BenchContext.create(root)          # real test images, Keras/ONNX reference, versions
    result = run_case(case, ctx)             # an InferenceResult

How a case is timed:
- the session or interpreter is built, the inputs prepared (and, on GPU, copied to the device;
  for an int8-I/O file, quantized) before the clock starts; warm-up calls follow, checked like
  every other call;
- each timed call is one `run` on one batch, read with `time.perf_counter` around the call only
  (GPU calls synchronize inside that span, so the clock never stops before the device does);
- every call's output is checked outside the timed span: shape [N,10], finite values, and for
  trained models the top-1 class against the reference (Keras, or the ONNX float32 export where
  TensorFlow is absent) on the images of that call. A runtime that fails this posts no time;
- p50/p90/p99 come from the raw per-call timings; images/s is batch / p50 (the median call,
  robust to a noisy shared CPU).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import artifacts, runtimes
from toolkit.benchmark.plan import DEFAULT_SECONDS, KERAS_RUNTIMES, BenchCase
from toolkit.benchmark.results import InferenceResult, TimingStats
from toolkit.contract import CLASSIFIER, package_versions
from toolkit.errors import DataError, ParityError, UsageError

CHECK_IMAGES = 64  # images per call whose top-1 is compared with the reference
MAX_FLIP_RATE = 0.10  # more top-1 disagreements than this over a case: the runtime is broken


class OutputCheckError(ParityError):
    """A benchmarked call returned non-finite values or the wrong classes."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def configure_tf_threads(threads: int) -> int:
    """Set TensorFlow's intra-op threads before its runtime starts; returns the count in force.

    Once TF has run anything the count is fixed for the process; then the current one is returned.
    """
    from toolkit._tf import tf

    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 2)
    return tf.config.threading.get_intra_op_parallelism_threads() or runtimes.cpu_count()


def tensorflow_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def bench_images(n_images: int) -> tuple[np.ndarray, str]:
    """The first `n_images` Fashion-MNIST test images in the model contract, and where they came
    from. A host without the dataset (a GPU box) times on seeded noise, which times the same;
    but an explicit source (--data-dir / TOOLKIT_DATA_DIR) that fails is an error, never replaced."""
    from toolkit.data import load, resolve_data_dir, to_model_input

    try:
        return to_model_input(load().x_test[:n_images]), f"the first {n_images} Fashion-MNIST test images"
    except DataError as exc:
        if resolve_data_dir()[0] is not None:
            raise
        noise = np.random.default_rng(0).random((n_images, *CLASSIFIER.input.shape[1:]), dtype=np.float32)
        return noise, f"seeded uniform noise (dataset unavailable: {exc.message.splitlines()[0][:100]})"


@dataclass
class BenchContext:
    """What every case of one run shares: inputs, references, versions, where results go."""

    root: Path
    images: np.ndarray  # float32 [M,28,28,1] in [0,1]
    inputs_source: str
    references: dict[str, np.ndarray | None] = field(default_factory=dict)
    reference_source: dict[str, str] = field(default_factory=dict)
    keras_threads: int | None = None  # TensorFlow's thread count in this process, once set
    versions: dict[str, str] = field(default_factory=package_versions)
    seconds: float = DEFAULT_SECONDS

    @classmethod
    def create(cls, root: str | Path | None = None, *, seconds: float = DEFAULT_SECONDS,
               n_images: int = 256) -> BenchContext:
        images, source = bench_images(n_images)
        return cls(root=artifacts.resolve_root(root), images=images, inputs_source=source, seconds=seconds)

    def batch_inputs(self, batch: int) -> list[np.ndarray]:
        """Inputs a case cycles through: 64 single images at batch 1, else one batch of `batch`."""
        if batch == 1:
            return [np.ascontiguousarray(self.images[i : i + 1])
                    for i in range(min(CHECK_IMAGES, len(self.images)))]
        reps = -(-batch // len(self.images))
        return [np.ascontiguousarray(np.concatenate([self.images] * reps)[:batch])]

    def reference(self, case: BenchCase, cases: Sequence[BenchCase] = ()) -> np.ndarray | None:
        """Top-1 classes of the spec's reference on the first CHECK_IMAGES images (trained only)."""
        if not case.trained:
            return None
        if case.spec not in self.references:
            self.references[case.spec], self.reference_source[case.spec] = self._compute_reference(
                case, cases)
        return self.references[case.spec]

    def _compute_reference(self, case: BenchCase,
                           cases: Sequence[BenchCase]) -> tuple[np.ndarray | None, str]:
        images = self.images[:CHECK_IMAGES]
        keras_path = artifacts.spec_artifacts(case.spec, self.root).model
        if tensorflow_available() and keras_path.is_file():
            model = runtimes.load(keras_path, "keras")
            return np.argmax(model.run(images), axis=1), "Keras model.keras"
        onnx = [c for c in cases if c.spec == case.spec and c.key == "onnx-fp32"]
        if onnx:
            model = runtimes.load(onnx[0].path, "onnxruntime", threads=1)
            return (np.argmax(model.run(images), axis=1),
                    "onnx-fp32 on ONNX Runtime CPU (TensorFlow not installed here)")
        return None, "none (no TensorFlow and no onnx-fp32 export): top-1 not checked"


# ---------------------------------------------------------------- output check


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


def plan_rounds(warmup_times: Sequence[float], seconds: float, *, min_rounds: int = 20,
                max_rounds: int = 2000) -> int:
    settled = sorted(warmup_times[2:] or warmup_times)
    estimate = max(settled[len(settled) // 2], 1e-6)
    return int(min(max_rounds, max(min_rounds, seconds / estimate)))


Timer = Callable[[Callable[[], Any], Callable[[], None], int], "list[float] | None"]


def own_timer(target: Callable[[], Any], after: Callable[[], None], rounds: int) -> list[float]:
    """The CLI's clock: perf_counter around the call only; the check runs after each call."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        target()
        times.append(time.perf_counter() - t0)
        after()
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
    spec = get_spec(case.spec)
    return InferenceResult(
        case=case, timed=raw is not None, warmup_calls=len(warm), params=spec.param_count(),
        mflops_per_image=spec.mflops_per_image(), inputs=ctx.inputs_source,
        reference=ctx.reference_source.get(case.spec), check=check, versions=ctx.versions,
        measured_at=now(), tf_threads=ctx.keras_threads if case.runtime in KERAS_RUNTIMES else None,
        load_avg_1m=os.getloadavg()[0], notes=prep.notes, pid=os.getpid(),
        stats=None if raw is None else TimingStats.from_times(raw, batch=case.batch, what=case.id),
    )
