"""Training-step benchmark cases (kind "training"): spec x mixed precision x batch size.

    cases = plan_training_cases(["CNN_1L_Dropout_Exp6"], precisions=["off", "bf16"], batches=["spec", 128],
                                threads=2)
    result = run_training_case(case, timer=own_timer, seconds=1.5)     # a TrainingResult

A case builds the spec's model (untrained: a step costs the same) as `toolkit train` does in that
mode (policy and optimizer), outside the clock, and feeds it a few real Fashion-MNIST training
batches, already tensors. The first calls trace and warm up the step; then each timed call is
one `train_on_batch` (forward, backward, optimizer update, metrics). Images per second = batch /
p50 step time. After the clock, every case checks what mixed precision must not change: variables and the
softmax output are float32 and the loss of every step was finite; a case that fails posts no
time. Results go to their own file under ARTIFACTS/bench/ (kind "training", schema version 1),
through `write_training_run` and read back by `read_training_runs` (one writer, one reader).

A mode the machine lacks (bf16 on a CPU without AVX-512 BF16) is skipped with the reason, not
timed on TensorFlow's slow emulation. The device is where TensorFlow trains: its GPU when it
sees one, else the CPU (never a CPU fallback reported as a GPU).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.benchmark.placement import SKIP, Environment, Placement, place_tensorflow
from toolkit.benchmark.plan import TRAINING, BenchCase
from toolkit.benchmark.timing import STATS, TimingStats
from toolkit.core import records
from toolkit.core.errors import ToolkitError, UsageError
from toolkit.core.machine import load_average, package_versions

SCHEMA_VERSION = 1
RUNTIME = "keras-train"
DEFAULT_SPECS = ("CNN_1L_Dropout_Exp6",)
DEFAULT_PRECISIONS = ("off", "bf16", "fp16")
DEFAULT_BATCHES = ("spec", "128")  # "spec": the spec's own batch size (its training recipe)
WARMUP_STEPS = 3
BATCHES_CYCLED = 4  # distinct real batches a case cycles through
WHAT = "training benchmark results"
FIX = "Delete it and rerun `pytest bench/ --benchmark-only`"


class TrainingCheckError(ToolkitError):
    """A benchmarked training step broke the float32 contract or produced a non-finite loss."""


def plan_training_cases(exps: Sequence[str] | None, *, precisions: Sequence[str] | None = None,
                        batches: Sequence[str | int] | None = None, threads: int) -> list[BenchCase]:
    """One case per spec x precision x batch ("spec" = the spec's own), at `threads` threads."""
    from toolkit.specs import match_specs
    from toolkit.training.precision import MODES

    specs = match_specs(_parts(exps) or list(DEFAULT_SPECS))
    modes = [m.lower() for m in _parts(precisions) or list(DEFAULT_PRECISIONS)]
    for mode in modes:
        if mode not in MODES or mode == "auto":
            raise UsageError(f"training precision {mode!r} is not one of off, bf16, fp16 (e.g. "
                             "--bench-train-precision off,bf16)")
    cases = []
    for spec in specs:
        for batch in _batches(_parts(batches) or list(DEFAULT_BATCHES), spec.batch_size):
            cases += [_case(spec.name, mode, batch, threads) for mode in dict.fromkeys(modes)]
    return cases


def _parts(values: Sequence[str | int] | None) -> list[str]:
    return [p.strip() for raw in values or () for p in str(raw).split(",") if p.strip()]


def _batches(values: list[str], spec_batch: int) -> list[int]:
    out = []
    for value in values:
        if value.lower() == "spec":
            out.append(spec_batch)
            continue
        try:
            out.append(int(value))
        except ValueError:
            raise UsageError(f"training batch sizes must be integers or 'spec', got {value!r}") from None
        if not 1 <= out[-1] <= 8192:
            raise UsageError(f"training batch size must be in 1..8192, got {out[-1]}")
    return list(dict.fromkeys(out))


def _case(spec: str, mode: str, batch: int, threads: int) -> BenchCase:
    precision = "fp32" if mode == "off" else mode
    return BenchCase(spec=spec, key=f"train-{precision}", format="keras", precision=precision,
                     runtime=RUNTIME, device=_device(), batch=batch, threads=threads, path="", size_bytes=0,
                     sha256=None, parity="n/a", trained=False, origin="untrained-spec", kind=TRAINING)


def _device() -> str:
    """Where TensorFlow trains: its GPU when it sees one (no TensorFlow here: the CPU, skipped later)."""
    from toolkit.benchmark.context import tensorflow_available
    from toolkit.training.precision import detect

    return "gpu" if tensorflow_available() and detect().gpu_name else "cpu"


def mode_of(case: BenchCase) -> str:
    return "off" if case.precision == "fp32" else case.precision


# ---------------------------------------------------------------- the record


@dataclass
class TrainingResult:
    """One measured training-step case (per-step timings; images/s = batch / p50)."""

    case: BenchCase
    timed: bool
    check: dict[str, Any]
    params: int
    mflops_per_image: float
    policy: str
    measured_at: str | None = None
    stats: TimingStats | None = None
    warmup_steps: int = 0
    inputs: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    tf_threads: int | None = None
    load_avg_1m: float | None = None

    @property
    def id(self) -> str:
        return self.case.id

    @property
    def train_gflops_per_s(self) -> float | None:
        """Forward + backward is about 3x the forward MACs x 2."""
        if self.stats is None:
            return None
        return 3 * self.mflops_per_image * self.stats.images_per_s / 1e3

    def to_dict(self) -> dict[str, Any]:
        out = {**self.case.to_dict(), "id": self.id, "timed": self.timed, "check": self.check,
               "params": self.params, "mflops_per_image": self.mflops_per_image, "policy": self.policy,
               "measured_at": self.measured_at, "warmup_steps": self.warmup_steps, "inputs": self.inputs,
               "versions": self.versions, "tf_threads": self.tf_threads, "load_avg_1m": self.load_avg_1m}
        if self.stats is not None:
            out.update({name: getattr(self.stats, name) for name in STATS})
            out["train_gflops_per_s"] = self.train_gflops_per_s
        return out

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path) -> TrainingResult:
        entry = records.Entry(doc, path=path, what=f"{WHAT} entry", fix=FIX)
        req, opt = entry.req, entry.opt
        number = (int, float)
        stats = TimingStats.from_doc(doc, path=path, what=f"{WHAT} entry")
        timed = stats is not None
        return cls(case=BenchCase.from_dict(doc, path=path), timed=timed, stats=stats,
                   check=req("check", dict), params=req("params", int),
                   mflops_per_image=req("mflops_per_image", number),
                   policy=req("policy", str), measured_at=opt("measured_at", str),
                   warmup_steps=opt("warmup_steps", int, 0), inputs=opt("inputs", str),
                   versions=opt("versions", dict, {}), tf_threads=opt("tf_threads", int),
                   load_avg_1m=opt("load_avg_1m", number))


@dataclass
class TrainingRun:
    """One training results file."""

    source: str
    results: list[TrainingResult]
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    written_at: str | None = None
    path: Path | None = None


def write_training_run(root: Path | None, run: TrainingRun) -> Path:
    from toolkit.core.machine import cpu_flags, machine_info

    flags = sorted(f for f in cpu_flags() if "bf16" in f or "fp16" in f or f.startswith("amx"))
    return records.write_bench_file(root, kind=TRAINING, schema_version=SCHEMA_VERSION, source=run.source,
                                    body={"results": [r.to_dict() for r in run.results]},
                                    machine=run.machine or {**machine_info(), "cpu_flags": flags},
                                    versions=run.versions or None)


def read_training_runs(root: Path | None) -> list[TrainingRun]:
    """Every training run under ROOT/bench/, oldest first; other kinds are skipped."""
    files = records.read_result_files(root, TRAINING, reader_version=SCHEMA_VERSION, what=WHAT,
                                      parse=TrainingResult.from_dict)
    return [TrainingRun(source=file.source, results=results, machine=file.machine, versions=file.versions,
                        written_at=file.written_at, path=file.path) for file, results in files]


# ---------------------------------------------------------------- running a case


@functools.lru_cache(maxsize=1)
def _training_images() -> tuple[np.ndarray, np.ndarray]:
    from toolkit.core.data import load, to_model_input

    dataset = load()
    return to_model_input(dataset.x_train), dataset.y_train.astype(np.int32)


@dataclass
class _Prepared:
    model: Any
    batches: list[tuple[Any, Any]]
    losses: list[float] = field(default_factory=list)


def _prepare(case: BenchCase) -> _Prepared:
    from toolkit.core.tf import keras, tf
    from toolkit.specs import get_spec
    from toolkit.training.train import build_training_model

    keras.utils.set_random_seed(0)
    model = build_training_model(get_spec(case.spec), mode_of(case))  # as `toolkit train` builds it
    x, y = _training_images()
    batches = []
    for i in range(BATCHES_CYCLED):
        idx = np.arange(i * case.batch, (i + 1) * case.batch) % len(y)
        batches.append((tf.constant(x[idx]), tf.constant(y[idx])))
    return _Prepared(model, batches)


def _step(prep: _Prepared, i: int) -> None:
    x, y = prep.batches[i % len(prep.batches)]
    logs = prep.model.train_on_batch(x, y, return_dict=True)
    prep.losses.append(float(logs["loss"]))


def _check(case: BenchCase, prep: _Prepared) -> dict[str, Any]:
    """What mixed precision must keep: float32 variables and softmax output, finite losses."""
    from toolkit.training.precision import base_optimizer

    model = prep.model
    wrong = [v.path for v in model.weights if v.dtype != "float32"]
    wrong += [v.path for v in base_optimizer(model.optimizer).variables
              if v.dtype not in ("float32", "int64") and not v.path.endswith("iteration")]
    out = model(prep.batches[0][0][:8], training=False)
    bad_losses = [i for i, loss in enumerate(prep.losses) if not math.isfinite(loss)]
    if wrong or out.dtype != "float32" or bad_losses:
        raise TrainingCheckError(
            f"{case.id}: the training step broke the float32 contract or diverged (non-float32 variables "
            f"{wrong[:3]}, softmax dtype {out.dtype.name}, non-finite loss at steps {bad_losses[:5]}); "
            "a broken step posts no time")
    return {"variables_float32": True, "output_dtype": "float32", "steps_checked": len(prep.losses),
            "losses_finite": True, "last_loss": prep.losses[-1] if prep.losses else None}


def run_training_case(case: BenchCase, *, timer: Any, seconds: float,
                      tf_threads: int | None = None) -> TrainingResult:
    """Prepare outside the clock, warm up, time `train_on_batch` steps, then check."""
    import time

    from toolkit.benchmark.timing import plan_rounds
    from toolkit.specs import get_spec
    from toolkit.training.precision import POLICIES

    prep = _prepare(case)
    warm = []
    for i in range(WARMUP_STEPS + 1):  # the first call traces the step function
        t0 = time.perf_counter()
        _step(prep, i)
        warm.append(time.perf_counter() - t0)
    rounds = plan_rounds(warm[1:], seconds, min_rounds=10, max_rounds=500)
    state = {"i": len(warm)}

    def target() -> None:
        _step(prep, state["i"])

    def after() -> None:
        state["i"] += 1

    raw = timer(target, after, rounds)
    check = _check(case, prep)
    spec = get_spec(case.spec)
    return TrainingResult(
        case=case, timed=raw is not None, check=check, params=int(prep.model.count_params()),
        mflops_per_image=spec.mflops_per_image(), policy=POLICIES[mode_of(case)], measured_at=records.now(),
        stats=None if raw is None else TimingStats.from_times(raw, batch=case.batch, what=case.id),
        warmup_steps=len(warm), inputs=f"{BATCHES_CYCLED} batches of real Fashion-MNIST training images",
        versions=package_versions(), tf_threads=tf_threads, load_avg_1m=load_average(),
    )


# ---------------------------------------------------------------- the kind


class TrainingKind:
    """One training step of a spec in a mixed-precision mode and batch size: images/s."""

    name = TRAINING
    repeatable = False  # images/s of a step; its seconds-long cases are not repeated
    isolated = False
    uses_peaks = False

    def needs_tensorflow(self, case: BenchCase) -> bool:
        return True

    def place(self, case: BenchCase, env: Environment) -> Placement:
        from toolkit.training.precision import resolve

        if not env.tensorflow:
            return place_tensorflow(case, env)
        try:
            resolve(mode_of(case))
        except UsageError as exc:  # timing TensorFlow's emulation of a missing type says nothing
            return Placement(SKIP, reason=exc.message)
        return place_tensorflow(case, env)

    def run(self, case: BenchCase, ctx: Any, *, timer: Any, cases: Sequence[BenchCase]) -> Any:
        return run_training_case(case, timer=timer, seconds=ctx.seconds, tf_threads=ctx.keras_threads)

    def finish(self, result: Any, peaks: dict[str, Any] | None) -> None:
        return None

    def read(self, doc: dict[str, Any], *, path: Path | None) -> Any:
        return TrainingResult.from_dict(doc, path=path or Path("<benchmark worker output>"))

    def write(self, root: Path, *, source: str, results: list[Any], peaks: dict[str, Any] | None,
              extra: dict[str, Any]) -> Path:
        return write_training_run(root, TrainingRun(source=source, results=results))


