"""Time to accuracy (kind "time-to-accuracy"), DAWNBench style: the training wall time of a
spec's run, the test accuracy of its final model (selected on the validation holdout, the test
set used once, at the end), and whether it reached a threshold; one case per seed.

    toolkit bench --kind time-to-accuracy --exp frontier --seeds 3 --threshold 0.94
    pytest bench/ --benchmark-only --bench-kind time-to-accuracy --bench-exp fast

A case trains the run through `toolkit.training.train` (never promoted: it does not replace the
spec's current run) in a TensorFlow worker at the case's thread count. A completed run with the
same manifest is reused and its recorded training time reported, marked `reused` (with when and
under what load it trained, where the run recorded it); `--fresh` trains it again, which is how
a baseline is re-measured back to back with a new recipe on a shared machine. Training time is
`train_seconds`: the epochs, validation included, without data loading, export or the final test.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.benchmark.placement import Environment, Placement, place_tensorflow
from toolkit.benchmark.plan import TIME_TO_ACCURACY, BenchCase
from toolkit.core import records, stats
from toolkit.core.errors import UsageError
from toolkit.core.machine import load_average

SCHEMA_VERSION = 1
RUNTIME = "keras-train"
WHAT = "time-to-accuracy results"


@dataclass(frozen=True)
class Settings:
    """What a case trains: the seed, the mode, and (quick checks) fewer epochs or images."""

    seed: int
    mixed_precision: str | None = None  # None: the spec's own
    threshold: float | None = None  # test accuracy the final model must reach
    epochs: int | None = None
    limit_train: int | None = None
    fresh: bool = False  # train again even if the run is complete

    def to_json(self) -> str:
        kept = {k: v for k, v in asdict(self).items() if v is not None and v is not False}
        return json.dumps(kept, sort_keys=True)

    @classmethod
    def of(cls, case: BenchCase) -> Settings:
        return cls(**json.loads(case.settings or "{}"))


def plan_cases(exps: Sequence[str] | None, *, seeds: int, threads: int, threshold: float | None = None,
               mixed_precision: str | None = None, epochs: int | None = None,
               limit_train: int | None = None, fresh: bool = False) -> list[BenchCase]:
    """One case per spec and seed (seeds 0..seeds-1)."""
    from toolkit.specs import match_specs
    from toolkit.training import precision

    if not exps:
        raise UsageError("time-to-accuracy needs --exp (a spec name or glob): it trains the spec")
    if not isinstance(seeds, int) or seeds < 1:
        raise UsageError(f"--seeds must be an integer >= 1, got {seeds!r} (3 gives a spread)")
    if threshold is not None and not 0 < threshold < 1:
        raise UsageError(f"--threshold is a test accuracy in (0, 1), e.g. 0.94; got {threshold!r}")
    cases = []
    for spec in match_specs(list(exps)):
        mode = precision.resolve(mixed_precision or spec.mixed_precision)
        for seed in range(seeds):
            settings = Settings(seed, mixed_precision, threshold, epochs, limit_train, fresh)
            cases.append(BenchCase(
                spec=spec.name, key=f"seed{seed}", format="keras",
                precision="fp32" if mode == "off" else mode, runtime=RUNTIME, device="cpu",
                batch=spec.batch_size, threads=threads, path="", size_bytes=0, sha256=None, parity="n/a",
                trained=False, origin="training", kind=TIME_TO_ACCURACY,
                settings=settings.to_json()))
    return cases


@dataclass
class TimeToAccuracyResult:
    case: BenchCase
    seed: int
    run_id: str
    train_seconds: float
    test_accuracy: float
    val_accuracy: float | None
    test_images: int
    epochs: int
    selected_epoch: int | None
    threshold: float | None
    reused: bool  # the run was complete: its recorded time, not a new measurement
    mixed_precision: str
    tf_threads: int | None = None
    load_avg_1m: float | None = None  # at the start and end of the training (max), when it trained here
    measured_at: str | None = None
    versions: dict[str, str] = field(default_factory=dict)

    timed = True  # every case that finished is a measurement (reused runs are marked as such)

    @property
    def id(self) -> str:
        return self.case.id

    @property
    def reached(self) -> bool | None:
        return None if self.threshold is None else self.test_accuracy >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "case"}
        return {**self.case.to_dict(), "id": self.id, **out, "reached": self.reached}

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path) -> TimeToAccuracyResult:
        entry = records.Entry(doc, path=path, what=f"{WHAT} entry", fix="")
        number = (int, float)
        return cls(
            case=BenchCase.from_dict(doc, path=path), seed=entry.req("seed", int),
            run_id=entry.req("run_id", str), train_seconds=entry.req("train_seconds", number),
            test_accuracy=entry.req("test_accuracy", number),
            val_accuracy=entry.opt("val_accuracy", number), test_images=entry.req("test_images", int),
            epochs=entry.req("epochs", int), selected_epoch=entry.opt("selected_epoch", int),
            threshold=entry.opt("threshold", number), reused=entry.req("reused", bool),
            mixed_precision=entry.req("mixed_precision", str), tf_threads=entry.opt("tf_threads", int),
            load_avg_1m=entry.opt("load_avg_1m", number), measured_at=entry.opt("measured_at", str),
            versions=entry.opt("versions", dict, {}))


def run_case(case: BenchCase, *, root: Path, tf_threads: int | None) -> TimeToAccuracyResult:
    """Train (or reuse) the case's run and report its time and final accuracy."""
    from toolkit.core.machine import package_versions
    from toolkit.training.train import TrainRequest, train

    settings = Settings.of(case)
    load_before = load_average()
    request = TrainRequest(case.spec, seed=settings.seed, epochs=settings.epochs,
                           limit_train=settings.limit_train, root=root, force=settings.fresh,
                           mixed_precision=settings.mixed_precision)
    result = train(request, promote=False)
    metrics = result.metrics
    load = [v for v in (load_before, None if result.reused else load_average()) if v is not None]
    return TimeToAccuracyResult(
        case=case, seed=settings.seed, run_id=metrics["run_id"],
        train_seconds=float(metrics["train_seconds"]),
        test_accuracy=float(metrics["test_accuracy"]), val_accuracy=metrics.get("val_accuracy"),
        test_images=int(metrics.get("test_images") or 0), epochs=int(metrics["epochs"]),
        selected_epoch=metrics.get("selected_epoch"), threshold=settings.threshold, reused=result.reused,
        mixed_precision=metrics.get("mixed_precision", "off"), tf_threads=tf_threads,
        load_avg_1m=None if result.reused else max(load, default=None), measured_at=records.now(),
        versions=package_versions())


# ---------------------------------------------------------------- the record


def write_results(root: Path, *, source: str, results: list[TimeToAccuracyResult]) -> Path:
    return records.write_bench_file(root, kind=TIME_TO_ACCURACY, schema_version=SCHEMA_VERSION, source=source,
                                    body={"results": [r.to_dict() for r in results]})


def read_results(root: Path | None, skipped: list | None = None) -> list[TimeToAccuracyResult]:
    """Every time-to-accuracy result under ROOT/bench/, oldest file first."""
    files = records.read_result_files(root, TIME_TO_ACCURACY, reader_version=SCHEMA_VERSION, what=WHAT,
                                      parse=TimeToAccuracyResult.from_dict, skipped=skipped)
    return [r for _, results in files for r in results]


@dataclass(frozen=True)
class Summary:
    """One spec's seeds: minutes (mean, range) and test accuracy (mean, and its interval)."""

    spec: str
    mixed_precision: str
    seeds: int
    minutes_mean: float
    minutes_low: float
    minutes_high: float
    accuracy_mean: float
    accuracy_std: float | None
    accuracy_interval: stats.Interval | None  # of the pooled test predictions' accuracy
    threshold: float | None
    reached: int  # seeds whose final model reached the threshold
    reused: int


def summarize(results: Sequence[TimeToAccuracyResult]) -> list[Summary]:
    by_spec: dict[tuple[str, str, float | None], list[TimeToAccuracyResult]] = {}
    for r in results:
        by_spec.setdefault((r.case.spec, r.mixed_precision, r.threshold), []).append(r)
    out = []
    for (spec, mode, threshold), group in by_spec.items():
        minutes = [r.train_seconds / 60 for r in group]
        accuracy = [r.test_accuracy for r in group]
        spread = stats.seed_spread(accuracy)
        images = sum(r.test_images for r in group)
        interval = stats.interval_of_accuracy(sum(accuracy) / len(accuracy), images) if images else None
        out.append(Summary(spec, mode, len(group), sum(minutes) / len(minutes), min(minutes), max(minutes),
                           spread.mean, spread.std, interval, threshold,
                           sum(bool(r.reached) for r in group), sum(r.reused for r in group)))
    return out


# ---------------------------------------------------------------- the kind


class TimeToAccuracyKind:
    """A whole training of a spec and seed: its wall time and its final model's test accuracy."""

    name = TIME_TO_ACCURACY
    repeatable = False  # the seeds are the repeats
    isolated = False
    uses_peaks = False

    def needs_tensorflow(self, case: BenchCase) -> bool:
        return True

    def place(self, case: BenchCase, env: Environment) -> Placement:
        return place_tensorflow(case, env)

    def run(self, case: BenchCase, ctx: Any, *, timer: Any, cases: Sequence[BenchCase]) -> Any:
        return run_case(case, root=ctx.root, tf_threads=ctx.keras_threads)

    def finish(self, result: Any, peaks: dict[str, Any] | None) -> None:
        return None

    def read(self, doc: dict[str, Any], *, path: Path | None) -> Any:
        return TimeToAccuracyResult.from_dict(doc, path=path or Path("<benchmark worker output>"))

    def write(self, root: Path, *, source: str, results: list[Any], peaks: dict[str, Any] | None,
              extra: dict[str, Any]) -> Path:
        return write_results(root, source=source, results=results)
