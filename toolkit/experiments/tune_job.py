"""One job of a search: train a candidate at one fidelity, then measure what its budgets and cost
need. Runs wherever the search puts it (this process, or a Ray worker) and touches no storage:
the search records what comes back.

- Training: `toolkit.training.train` with `promote=False` and `evaluate_test=False` (the search
  sees validation figures only; the test set is never evaluated for a candidate), into the
  search's own root (ARTIFACTS/tune/STUDY/), so a completed run is reused and an interrupted one
  resumes from its last epoch, as every run of the toolkit does.
- Measuring: the trained model converted to tflite-int8io (its bytes: the flash figure; TFLM's
  measured arena plus the CMSIS-NN margin, `Arena.recommended`, where tflite-micro is installed,
  else toolkit.runtimes.tflite_info's estimate, said so) and, for a latency budget or cost, to
  tflite-int8, timed on LiteRT at batch 1 on one thread (the p50 of LATENCY_SECONDS of calls after
  a warm-up, on whatever machine runs the job).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import artifacts, data
from toolkit.core.errors import Interrupted
from toolkit.specs import Spec

# training images, for the int8 conversions (the bytes and arena do not depend on them)
CALIBRATION_IMAGES = 200
ARENA_CHECK_IMAGES = 16
LATENCY_SECONDS = 1.0

EpochHook = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class Job:
    trial: int  # the Optuna trial's number
    rung: int  # the fidelity's index
    spec: Spec  # the candidate, with this fidelity's epochs
    seed: int
    limit_train: int | None
    root: Path  # the search's root for candidate runs
    data_dir: Path | None
    measure: tuple[str, ...] = ()  # flash, arena, latency

    @property
    def key(self) -> str:
        return f"{self.trial}/{self.rung}"


@dataclass
class JobResult:
    trial: int
    rung: int
    val_accuracy: float | None = None
    val_images: int | None = None
    train_seconds: float | None = None
    seconds: float = 0.0  # wall time of the job: training and measuring
    run_id: str | None = None
    reused: bool = False
    measured: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    node: str | None = None


def run_job(job: Job, *, on_epoch: EpochHook | None = None) -> JobResult:
    """Train and measure; a failure is the result's error (the search goes on), an interrupt is raised."""
    from toolkit.experiments.sweep_plan import describe_error
    from toolkit.training.train import TrainRequest, train

    started = time.perf_counter()
    out = JobResult(job.trial, job.rung, node=socket.gethostname())
    try:
        result = train(TrainRequest(job.spec, seed=job.seed, epochs=job.spec.epochs,
                                    limit_train=job.limit_train,
                                    root=job.root, data_dir=job.data_dir, resume=True, evaluate_test=False),
                       promote=False, on_epoch=on_epoch)
        metrics = result.metrics
        out.val_accuracy, out.val_images = metrics["val_accuracy"], metrics["val_images"]
        out.train_seconds, out.run_id, out.reused = metrics["train_seconds"], metrics["run_id"], result.reused
        if job.measure:
            folder = artifacts.spec_artifacts(job.spec.name, job.root).dir / "tune" / metrics["run_id"]
            out.measured = measure(result.run_dir / "model.keras", folder, job.measure,
                                   calibration_images(job))
    except (Interrupted, KeyboardInterrupt):
        raise
    except Exception as exc:  # isolation: one failing candidate must not stop the search
        out.error = describe_error(exc)
    out.seconds = round(time.perf_counter() - started, 2)
    return out


def calibration_images(job: Job) -> np.ndarray:
    """A seeded sample of the candidate's own training images (never validation or test)."""
    from toolkit.training.inputs import split_indices

    dataset = data.load(job.data_dir)
    train_idx, _ = split_indices(len(dataset.y_train), seed=job.seed, fraction=job.spec.validation_fraction,
                                 limit_train=job.limit_train)
    chosen = np.random.default_rng(job.seed).permutation(train_idx)[:CALIBRATION_IMAGES]
    return data.to_model_input(dataset.x_train[np.sort(chosen)])


def measure(model_path: Path, folder: Path, figures: tuple[str, ...], images: np.ndarray) -> dict[str, Any]:
    """The figures asked for, of the Keras model at `model_path`; the files are kept in `folder`."""
    from toolkit.specs.models import load_model

    model = load_model(model_path)
    out: dict[str, Any] = {}
    if "flash" in figures or "arena" in figures:
        path = _convert(model, folder / "model.int8io.tflite", "int8io", images)
        out["flash"] = path.stat().st_size
        if "arena" in figures:
            out.update(arena(path, images))
    if "latency" in figures:
        out.update(int8_latency(_convert(model, folder / "model.int8.tflite", "int8", images)))
    return out


def _convert(model, path: Path, precision: str, images: np.ndarray) -> Path:
    import logging

    from toolkit.core.quiet import quiet_stderr
    from toolkit.export.tflite import to_tflite

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the converter's chatter
    try:
        with quiet_stderr():
            flatbuffer = to_tflite(model, precision=precision, calibration=images)
    finally:
        root.setLevel(level)
    artifacts.write_bytes(path, flatbuffer)
    return path


def arena(path: Path, images: np.ndarray) -> dict[str, Any]:
    """What a firmware reserves for the file: TFLM's measured minimum plus the CMSIS-NN margin
    (`recommended`), or the toolkit's estimate where tflite-micro is not installed."""
    from toolkit.runtimes import tflite_info, tflm

    if tflm.available():
        found = tflm.measure_arena(path, images[:ARENA_CHECK_IMAGES])
        return {"arena": found.recommended, "arena_source": f"TFLM {tflm.version()}",
                "arena_minimum": found.minimum}
    info = tflite_info.read(path)
    return {"arena": tflm.align16(info.arena_bytes) + tflm.align16(info.scratch_bytes),
            "arena_source": "estimate (tflite-micro is not installed: pip install '.[mcu]')"}


def int8_latency(path: Path, *, seconds: float = LATENCY_SECONDS) -> dict[str, Any]:
    """The tflite-int8 file's batch-1 p50 on LiteRT with one thread (float input, as the report's
    int8 rows): warmed up, then timed call by call."""
    from toolkit.benchmark.timing import TimingStats, own_timer, plan_rounds
    from toolkit.runtimes.litert import LiteRTModel

    model = LiteRTModel(path, device="cpu", threads=1)
    image = np.zeros((1, 28, 28, 1), dtype=np.float32)
    warm = own_timer(lambda: model.run(image), lambda: None, 20)
    rounds = plan_rounds(warm, seconds, min_rounds=50, max_rounds=50_000)
    times = own_timer(lambda: model.run(image), lambda: None, rounds)
    stats = TimingStats.from_times(times, batch=1)
    low, high = median_interval(times)
    return {"latency": round(stats.p50_ms, 5), "latency_p90": round(stats.p90_ms, 5),
            "latency_low": round(low * 1e3, 5), "latency_high": round(high * 1e3, 5),
            "latency_rounds": rounds}


def median_interval(times: Any, confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of timings (order statistics, binomial): the
    latency budget judges a candidate by its upper end, so one near the timer floor is not let in
    by a lucky p50."""
    from scipy.stats import binom

    ordered = np.sort(np.asarray(times, dtype=np.float64))
    n = len(ordered)
    k = int(binom.ppf((1 - confidence) / 2, n, 0.5))
    return float(ordered[max(k - 1, 0)]), float(ordered[min(n - k, n - 1)])
