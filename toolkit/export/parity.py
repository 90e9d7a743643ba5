"""Prove that every export predicts what the Keras model predicts, on the full test set.

The Keras reference is computed once per spec; each export then goes through the same checks,
in this order (as optimum's validation does): input/output names and shapes, then values. Every
failure is collected, not just the first. Tolerances are data (TOLERANCES, per precision), and
each result also says the smallest tolerance that would have passed.

parity.json is this module's typed, versioned record (ParityRecord: one reader, one writer).
Every result names the sha256 of the file it checked, and a result only counts for that file:
readers (and the merge of a partial recheck) ignore results whose file has changed since.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import artifacts, records
from toolkit.core.contract import CLASSIFIER, IOContract
from toolkit.core.errors import ArtifactError, NewerRecordError
from toolkit.core.stats import accuracy_interval, paired_predictions
from toolkit.export.record import ParitySummary
from toolkit.export.registry import FORMATS, export_path

BATCH = 1000
KERAS_KEY = "keras-fp32"  # the reference's name among the predictions files, as in the benchmarks
SCHEMA_VERSION = 2  # 2: each result names the sha256 of the file it checked; 1: without it
WHAT = "parity results"


@dataclass(frozen=True)
class Tolerance:
    min_agreement: float  # fraction of test images whose top-1 class matches Keras
    max_abs_diff: float | None = None  # on probabilities; None: not checked
    max_accuracy_drop_pp: float | None = None  # percentage points below Keras; None: not checked


QUANTIZED = Tolerance(min_agreement=0.99, max_accuracy_drop_pp=0.5)
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(min_agreement=0.999, max_abs_diff=1e-4),
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
    top1: Any = field(default=None, repr=False, compare=False)  # this check's classes; not written

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def fail(self, message: str) -> None:
        self.failures.append(message)
        self.status = "fail"

    def summary(self) -> ParitySummary:
        """What exports.json keeps of the result (parity.json keeps everything)."""
        return ParitySummary(
            status=self.status, sha256=self.sha256, failures=self.failures, agreement=self.agreement,
            flipped=self.flipped, max_abs_diff=self.max_abs_diff, mean_abs_diff=self.mean_abs_diff,
            p99_abs_diff=self.p99_abs_diff, test_accuracy=self.test_accuracy,
            keras_accuracy=self.keras_accuracy, accuracy_delta_pp=self.accuracy_delta_pp, images=self.images,
            accuracy_ci=self.accuracy_ci, mcnemar_p=self.mcnemar_p, discordant=self.discordant,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "top1"}
        return {**out, "passed": self.passed}

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path) -> ParityResult:
        entry = records.Entry(doc, path=path, what=f"{WHAT} entry",
                              fix="Delete it and rerun `toolkit parity`")
        names = {f.name for f in fields(cls)} - {"top1"}
        for name in ("key", "status"):
            entry.req(name, str)
        return cls(**{k: v for k, v in doc.items() if k in names})


def tolerance_for(precision: str) -> Tolerance:
    return TOLERANCES.get(precision, QUANTIZED)


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
    tol = tolerance_for(result.precision)
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
    try:
        candidate = run_batched(model.run, images)
    except Exception as exc:  # a runtime error on real data is a parity failure, not a crash
        result.fail(f"running it failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return result
    result.output_shape = list(candidate.shape)
    if candidate.shape != reference.shape:
        result.fail(f"output shape {list(candidate.shape)}, expected {list(reference.shape)}")
        return result
    return compare(result, reference, candidate, labels)


# ---------------------------------------------------------------- one spec


@dataclass
class SpecParity:
    spec: str
    keras_accuracy: float
    results: list[ParityResult]
    images: int = 0
    not_checked: list[str] = field(default_factory=list)  # keys whose export failed or is missing
    keras_predictions: dict[str, Any] | None = None  # the Keras reference's top-1 file

    @property
    def failed(self) -> list[ParityResult]:
        return [r for r in self.results if not r.passed]


def check_spec(name: str, *, root=None, keys: Sequence[str] | None = None, dataset=None, data_dir=None,
               hook: Callable[[str, str], None] | None = None) -> SpecParity:
    """Check the listed exports (default: all in exports.json) of a trained spec; write
    parity.json and each export's parity result into exports.json."""
    from toolkit.export import pipeline

    arts = artifacts.spec_artifacts(name, root)
    arts.require_trained()
    with pipeline.export_lock(arts):
        return _check_spec(arts, keys=keys, dataset=dataset, data_dir=data_dir, hook=hook)


def _check_spec(arts, *, keys, dataset, data_dir, hook) -> SpecParity:
    from toolkit.export.record import ExportsRecord, read_exports, write_exports

    name = arts.name
    record = read_exports(arts)
    entries = record.by_key()
    wanted = [k for k in (keys if keys is not None else list(entries)) if k in entries]
    if not wanted:
        raise ArtifactError(f"{name} has no exports to check under {arts.root}. "
                            f"Export it first: toolkit export --exp {name} --artifacts {arts.root}")
    if dataset is None:
        from toolkit.core import data

        dataset = data.load(data_dir)
    from toolkit.core.data import to_model_input

    images, labels = to_model_input(dataset.x_test), dataset.y_test
    source_sha = artifacts.sha256_file(arts.model)
    if hook:
        hook("start", "keras")
    reference = keras_reference(arts.model, images)
    keras_accuracy = float(np.mean(reference.argmax(1) == labels))
    if hook:
        hook("done", "keras")
    outcome = SpecParity(name, keras_accuracy, [], images=len(images))
    outcome.keras_predictions = _save_top1(arts, KERAS_KEY, reference.argmax(1))
    for key in wanted:
        if not entries[key].exported or key not in FORMATS:
            outcome.not_checked.append(key)
            continue
        if hook:
            hook("start", key)
        result = _check_entry(arts, entries[key], source_sha=source_sha, reference=reference,
                              images=images, labels=labels)
        result.predictions = _save_top1(arts, key, result.top1)
        outcome.results.append(result)
        entries[key].parity = result.summary()
        if hook:
            hook("done", key)
    # Write both records last; exports.json keeps the summary, parity.json everything.
    write_exports(arts, ExportsRecord(name, record.source_model_sha256 or source_sha, list(entries.values())))
    write_parity(arts, outcome, source_sha)
    return outcome


def _save_top1(arts, key: str, top1: np.ndarray | None) -> dict[str, Any] | None:
    """Keep this check's top-1 classes beside parity.json (NAME/predictions/KEY.npy) so any two
    rows can be compared image by image later; a check without outputs leaves no stale file."""
    path = arts.predictions_file(key)
    if top1 is None:
        path.unlink(missing_ok=True)
        return None
    ref = artifacts.save_predictions(path, top1)
    return {**ref, "file": str(path.relative_to(arts.dir))}


def _check_entry(arts, entry, *, source_sha: str, reference: np.ndarray, images: np.ndarray,
                 labels: np.ndarray) -> ParityResult:
    fmt = FORMATS[entry.key]
    path = arts.dir / entry.path
    if not path.is_file():
        result = ParityResult(key=entry.key, precision=fmt.precision, path=str(path))
        result.fail(f"{path} is missing; re-export it: toolkit export --exp {arts.name} --force")
    else:
        file_sha = artifacts.sha256_file(path)  # the export lock keeps it from changing meanwhile
        result = check_file(path, key=entry.key, precision=fmt.precision, runtime=fmt.runtimes[0],
                            reference=reference, images=images, labels=labels, contract=fmt.io)
        result.sha256 = file_sha
        result.sha256_matches_export = file_sha == entry.sha256
        if not result.sha256_matches_export:
            result.fail(f"{path.name} changed since it was exported (sha256 differs from exports.json)")
    if entry.source_model_sha256 != source_sha:
        result.fail("model.keras changed since this export; re-export it: "
                    f"toolkit export --exp {arts.name} --force")
    return result


# ---------------------------------------------------------------- parity.json


@dataclass
class ParityRecord:
    spec: str
    source_model_sha256: str | None
    results: list[ParityResult]
    test_images: int = 0
    keras_accuracy: float | None = None
    checked_at: str | None = None
    keras_predictions: dict[str, Any] | None = None  # absent in records older than per-image files

    def result(self, key: str) -> ParityResult | None:
        return next((r for r in self.results if r.key == key), None)


def read_parity(arts) -> ParityRecord | None:
    """The spec's parity.json, or None when there is none."""
    path = arts.parity_json
    if not path.is_file():
        return None
    fix = f"Delete it and rerun: toolkit parity --exp {arts.name}"
    doc = records.load(path, what=WHAT, reader_version=SCHEMA_VERSION, fix=fix)
    record = records.Entry(doc, path=path, what=WHAT, fix=fix)
    keras = record.opt("keras", dict, {})
    return ParityRecord(
        spec=record.opt("spec", str, arts.name),
        source_model_sha256=record.opt("source_model_sha256", str),
        results=[ParityResult.from_dict(r, path=path) for r in record.req("exports", list)],
        test_images=record.opt("test_images", int, 0),
        keras_accuracy=keras.get("test_accuracy"),
        checked_at=record.opt("checked_at", str),
        keras_predictions=records.optional(keras, "predictions", dict, path=path, what=f"{WHAT} keras entry"),
    )


def write_parity(arts, outcome: SpecParity, source_sha: str) -> None:
    """parity.json: this check's results, plus earlier results of other exports that still
    describe the files there now (same model.keras, same file sha256)."""
    from toolkit.export.record import now

    kept: dict[str, ParityResult] = {}
    try:
        previous = read_parity(arts)
    except NewerRecordError:
        raise  # written by a newer toolkit: never overwritten by an older one
    except ArtifactError:
        previous = None  # a corrupt earlier record is replaced, not merged
    if previous is not None and previous.source_model_sha256 == source_sha:
        for r in previous.results:
            path = export_path(arts, FORMATS[r.key]) if r.key in FORMATS else None
            if r.sha256 and path is not None and path.is_file() and artifacts.sha256_file(path) == r.sha256:
                kept[r.key] = r
    kept.update({r.key: r for r in outcome.results})
    order = {k: i for i, k in enumerate(FORMATS)}
    artifacts.write_json(arts.parity_json, {
        records.VERSION_KEY: SCHEMA_VERSION,
        "spec": outcome.spec,
        "source_model_sha256": source_sha,
        "checked_at": now(),
        "test_images": outcome.images,
        "keras": {"runtime": "keras", "test_accuracy": outcome.keras_accuracy,
                  "predictions": outcome.keras_predictions},
        "tolerances": {k: {n: v for n, v in asdict(t).items() if v is not None}
                       for k, t in TOLERANCES.items()},
        "exports": [r.to_dict() for r in sorted(kept.values(), key=lambda r: order.get(r.key, len(order)))],
    })
