"""Prove that an export predicts what the Keras model predicts, on the full test set.

Each file, on each runtime that runs it (a parity row, toolkit.export.registry.row_name), goes
through the same checks, in this order (as optimum's validation does): input/output names and
shapes, then values. Every failure is collected, not just the first. Tolerances are data
(TOLERANCES, per precision; a row whose runtime computes at another precision than the file's is
judged by that precision, tolerance_of), and each result also says the smallest tolerance that
would have passed. toolkit.export.parity_rows checks a spec's exports row by row; toolkit.export.parity_record
is parity.json.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import records
from toolkit.core.contract import CLASSIFIER, IOContract
from toolkit.core.errors import ArtifactError
from toolkit.core.stats import accuracy_interval, paired_predictions
from toolkit.export.record import ParitySummary

BATCH = 1000
KERAS_KEY = "keras-fp32"  # the reference's name among the predictions files, as in the benchmarks
WHAT = "parity results"


@dataclass(frozen=True)
class Tolerance:
    min_agreement: float  # fraction of test images whose top-1 class matches Keras
    max_abs_diff: float | None = None  # on probabilities; None: not checked
    max_accuracy_drop_pp: float | None = None  # percentage points below Keras; None: not checked


QUANTIZED = Tolerance(min_agreement=0.99, max_accuracy_drop_pp=0.5)
# A float32 file a runtime computes in bfloat16 (OpenVINO's CPU default on AMX CPUs). bf16 keeps
# float32's exponent and 8 significant bits: every weight and activation entering a matrix
# multiply is rounded to within 2^-9 (0.2%) of itself, and the products accumulate in float32.
# Through a few layers the logits move by about a percent of their spread, so probabilities move
# by a few hundredths at most (Exp6: 0.019 at worst over 10,000 images, against 2e-6 at float32)
# and only images whose top two classes are nearly tied can flip (Exp6: 4 of 10,000). The bounds
# below leave room for deeper specs while staying twice as strict as int8's agreement and
# accuracy bounds: a runtime that computes something else than bf16 rounding fails them.
BF16 = Tolerance(min_agreement=0.995, max_abs_diff=0.1, max_accuracy_drop_pp=0.2)
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(min_agreement=0.999, max_abs_diff=1e-4),
    "bf16": BF16,  # a row that computes bf16 (the file's own precision being fp32)
    "fp16": QUANTIZED,
    "int8": QUANTIZED,
    "dynamic": QUANTIZED,
    "int8io": QUANTIZED,  # compared after dequantizing its int8 output
}


@dataclass
class ParityResult:
    key: str
    precision: str
    path: str
    status: str = "pass"  # "pass" | "fail"
    failures: list[str] = field(default_factory=list)
    runtime: str | None = None
    provider: str | None = None
    input_name: str | None = None
    output_names: list[str] = field(default_factory=list)
    input_shape: list[Any] | None = None
    output_shape: list[int] | None = None
    images: int = 0
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    p99_abs_diff: float | None = None
    agreement: float | None = None
    flipped: int | None = None
    flipped_indices: list[int] = field(default_factory=list)
    keras_accuracy: float | None = None
    test_accuracy: float | None = None
    accuracy_delta_pp: float | None = None
    nan_count: int | None = None
    inf_count: int | None = None
    tolerance: dict[str, Any] = field(default_factory=dict)
    would_pass_with: dict[str, Any] = field(default_factory=dict)
    sha256_matches_export: bool | None = None
    sha256: str | None = None  # of the file checked (None in version-1 records, or if it was missing)
    # Added without a version bump (older readers ignore them; absent in older records):
    accuracy_ci: list[float] | None = None  # 95% Wilson interval of test_accuracy
    mcnemar_p: float | None = None  # exact McNemar, export vs Keras, on the same test images
    discordant: list[int] | None = None  # [Keras right & export wrong, export right & Keras wrong]
    predictions: dict[str, Any] | None = None  # {"file": "predictions/KEY.npy", "sha256", "images"}
    # Version 3: the row (the file on this runtime, computing at this precision).
    computes: str | None = None  # the precision the runtime computes (None: the file's own)
    row: str | None = None  # toolkit.export.registry.row_name (None in older records: the key)
    wall_seconds: float | None = None  # running the test images on this runtime
    workers: int | None = None  # processes they were spread over (a single-threaded runtime)
    host_ms_per_image: float | None = None  # per image and worker, where the runtime is host-only
    parallel_efficiency: float | None = None  # busy seconds of the workers / (workers x wall)
    primary_row: str | None = None  # the file's primary row, which this one is compared with
    differing_from_primary: int | None = None  # images whose top-1 differs from the primary row's
    differing_indices: list[int] = field(default_factory=list)
    arena: dict[str, Any] | None = None  # TFLM's measured arena (toolkit.runtimes.tflm.Arena)
    top1: Any = field(default=None, repr=False, compare=False)  # this check's classes; not written

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def name(self) -> str:
        return self.row or self.key

    def fail(self, message: str) -> None:
        self.failures.append(message)
        self.status = "fail"

    def summary(self) -> ParitySummary:
        """What exports.json keeps of the result (parity.json keeps everything)."""
        primary = self.row in (None, self.key)
        return ParitySummary(
            status=self.status, sha256=self.sha256, failures=self.failures, agreement=self.agreement,
            flipped=self.flipped, max_abs_diff=self.max_abs_diff, mean_abs_diff=self.mean_abs_diff,
            p99_abs_diff=self.p99_abs_diff, test_accuracy=self.test_accuracy,
            keras_accuracy=self.keras_accuracy, accuracy_delta_pp=self.accuracy_delta_pp, images=self.images,
            accuracy_ci=self.accuracy_ci, mcnemar_p=self.mcnemar_p, discordant=self.discordant,
            runtime=None if primary else self.runtime, computes=None if primary else self.computes,
            host_ms_per_image=self.host_ms_per_image, differing_from_primary=self.differing_from_primary,
            wall_seconds=None if primary else self.wall_seconds, workers=None if primary else self.workers,
            parallel_efficiency=None if primary else self.parallel_efficiency,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "top1"}
        return {**out, "passed": self.passed}

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path) -> ParityResult:
        entry = records.Entry(doc, path=path, what=f"{WHAT} entry",
                              fix="Delete it and rerun `toolkit parity`")
        names = {f.name for f in fields(cls)} - {"top1"}
        entry.key("key")
        entry.req("status", str)
        if doc.get("row") is not None:
            entry.key("row")
        predictions = entry.opt("predictions", dict)
        if predictions is not None:  # the file a reader will open: confined to the spec's folder
            records.Entry(predictions, path=path, what=f"{WHAT} predictions", fix="").relpath("file")
        return cls(**{k: v for k, v in doc.items() if k in names})


def tolerance_for(precision: str) -> Tolerance:
    return TOLERANCES.get(precision, QUANTIZED)


def tolerance_of(precision: str, computes: str | None = None) -> Tolerance:
    """The tolerance a row is judged by: a float32 file's by the precision its runtime computes
    (bf16: BF16; an int8 mix: QUANTIZED), any other file's by its own precision, whose tolerance
    is already looser than bf16's."""
    if precision == "fp32" and computes and computes != "fp32":
        return tolerance_for(computes)
    return tolerance_for(precision)


def run_batched(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                batch: int = BATCH) -> np.ndarray:
    return np.concatenate([np.asarray(run(images[i:i + batch])) for i in range(0, len(images), batch)])


def keras_reference(model_path: Path, images: np.ndarray) -> np.ndarray:
    """Keras probabilities for `images` (the compiled-function runtime, safe-mode load)."""
    from toolkit import runtimes

    model = runtimes.load(model_path, "keras")
    return run_batched(model.run, images)


def compare(result: ParityResult, reference: np.ndarray, candidate: np.ndarray,
            labels: np.ndarray) -> ParityResult:
    """Value checks of `candidate` against `reference`, appended to `result`."""
    tol = tolerance_of(result.precision, result.computes)
    result.tolerance = {k: v for k, v in asdict(tol).items() if v is not None}
    candidate = np.asarray(candidate, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    result.images = len(candidate)
    finite = np.isfinite(candidate)
    result.nan_count = int(np.isnan(candidate).sum())
    result.inf_count = int(np.isinf(candidate).sum())
    if result.nan_count or result.inf_count:
        result.fail(f"non-finite outputs: {result.nan_count} NaN and {result.inf_count} Inf values")
    diff = np.abs(np.where(finite, candidate, np.inf) - reference)
    per_image = diff.max(axis=1)
    result.max_abs_diff = float(diff.max())
    result.mean_abs_diff = float(diff.mean()) if np.isfinite(diff).all() else math.inf
    result.p99_abs_diff = float(np.percentile(per_image, 99))
    ref_top, cand_top = reference.argmax(1), np.where(finite, candidate, -np.inf).argmax(1)
    flipped = np.flatnonzero(ref_top != cand_top)
    result.flipped = int(len(flipped))
    result.flipped_indices = [int(i) for i in flipped]
    result.agreement = 1.0 - len(flipped) / len(candidate)
    result.keras_accuracy = float(np.mean(ref_top == labels))
    result.test_accuracy = float(np.mean(cand_top == labels))
    result.accuracy_delta_pp = (result.test_accuracy - result.keras_accuracy) * 100
    interval = accuracy_interval(int(np.count_nonzero(cand_top == labels)), len(labels))
    result.accuracy_ci = [interval.low, interval.high]
    paired = paired_predictions(ref_top, cand_top, labels)  # a = Keras, b = the export
    result.mcnemar_p, result.discordant = paired.p_value, [paired.only_a, paired.only_b]
    result.top1 = cand_top.astype(np.uint8)
    drop = -result.accuracy_delta_pp

    if result.agreement < tol.min_agreement:
        result.fail(f"top-1 agreement {result.agreement:.2%} < {tol.min_agreement:.2%} "
                    f"(short by {(tol.min_agreement - result.agreement) * 100:.2f} pp; "
                    f"{result.flipped} of {result.images} predictions flipped)")
    if tol.max_abs_diff is not None and not result.max_abs_diff <= tol.max_abs_diff:
        result.fail(f"max abs difference {result.max_abs_diff:.3g} > {tol.max_abs_diff:.0e} "
                    f"({result.max_abs_diff / tol.max_abs_diff:.1f}x the tolerance)")
    if tol.max_accuracy_drop_pp is not None and drop > tol.max_accuracy_drop_pp:
        result.fail(f"accuracy {result.test_accuracy:.2%} is {drop:.2f} pp below Keras's "
                    f"{result.keras_accuracy:.2%} (tolerance {tol.max_accuracy_drop_pp} pp; "
                    f"over by {drop - tol.max_accuracy_drop_pp:.2f} pp)")
    # The loosest setting of each check that this export meets: its own measurements.
    result.would_pass_with = {"min_agreement": result.agreement, "max_abs_diff": result.max_abs_diff,
                              "max_accuracy_drop_pp": max(drop, 0.0)}
    return result


def check_file(path: Path, *, key: str, precision: str, runtime: str, reference: np.ndarray,
               images: np.ndarray, labels: np.ndarray, contract: IOContract = CLASSIFIER) -> ParityResult:
    """Load an exported file on `runtime`, check names and shapes against `contract`, then values."""
    from toolkit import runtimes

    result = ParityResult(key=key, precision=precision, path=str(path), runtime=runtime)
    try:
        model = runtimes.load(path, runtime, contract=None)  # mismatches are collected below
    except ArtifactError as exc:
        result.fail(f"cannot load: {exc.message}")
        return result
    result.provider = model.provider
    result.input_name, result.output_names = model.input_name, list(model.output_names)
    result.input_shape = list(model.input_shape or []) or None
    # Names and shapes first (every mismatch collected); a model with the wrong interface is
    # not compared value by value.
    for problem in model.mismatches(contract):
        result.fail(f"contract: {problem}")
    if result.failures:
        return result
    started = time.perf_counter()
    try:
        candidate, timing = model.run_all(images, BATCH)
    except Exception as exc:  # a runtime error on real data is a parity failure, not a crash
        result.fail(f"running it failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return result
    # Read once it ran: a runtime that picks kernels at the first call names them only then.
    result.provider, result.computes = model.provider, model.computes or precision
    result.wall_seconds = round(time.perf_counter() - started, 3)
    result.workers = timing.get("workers")
    result.host_ms_per_image = timing.get("ms_per_image")
    result.parallel_efficiency = timing.get("efficiency")
    result.output_shape = list(candidate.shape)
    if candidate.shape != reference.shape:
        result.fail(f"output shape {list(candidate.shape)}, expected {list(reference.shape)}")
        return result
    return compare(result, reference, candidate, labels)
