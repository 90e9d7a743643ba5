"""Check a spec's exports on every runtime that runs them, row by row (a row: one file on one
runtime at the precision it computes, toolkit.export.registry.row_name), against the Keras model
on the full test set, and write the results into exports.json (a summary per row) and
parity.json (everything).

A file's primary row is its first runtime (LiteRT for TFLite, ONNX Runtime for ONNX); other rows
(TFLM for full-integer TFLite files, OpenVINO for ONNX files) are compared against Keras with the
tolerances of the precision they compute (toolkit.export.parity.tolerance_of), and also with the
primary row on the same file (images whose top-1 differs). A runtime that is not installed here,
or that this machine cannot run (OpenVINO's bf16 default on a CPU without native bf16), skips its
rows with the reason; a row that fails does not fail the file's other rows. Under TFLM the arena
is measured too (toolkit.runtimes.tflm.measure_arena).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from toolkit.core import artifacts
from toolkit.core.errors import ArtifactError
from toolkit.export.parity import KERAS_KEY, ParityResult, check_file, keras_reference
from toolkit.export.parity_record import SpecParity, write_parity
from toolkit.export.registry import FORMATS, row_name

Hook = Callable[[str, str], None]  # (event: "start" | "done", row)
DIFFERING_LISTED = 50  # indices of images whose top-1 differs from the primary row, kept


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
    from toolkit.core.data import to_model_input
    from toolkit.export.record import ExportsRecord, read_exports, write_exports

    record = read_exports(arts)
    entries = record.by_key()
    wanted = [k for k in checked_keys(keys if keys is not None else list(entries)) if k in entries]
    if not wanted:
        raise ArtifactError(f"{arts.name} has no exports to check under {arts.root}. "
                            f"Export it first: toolkit export --exp {arts.name} --artifacts {arts.root}")
    if dataset is None:
        from toolkit.core import data

        dataset = data.load(data_dir)
    images, labels = to_model_input(dataset.x_test), dataset.y_test
    source_sha = artifacts.sha256_file(arts.model)
    _hook(hook, "start", "keras")
    reference = keras_reference(arts.model, images)
    _hook(hook, "done", "keras")
    outcome = SpecParity(arts.name, float(np.mean(reference.argmax(1) == labels)), [], images=len(images))
    outcome.keras_predictions = _save_top1(arts, KERAS_KEY, reference.argmax(1))
    checked = _Checked(arts, source_sha, reference, images, labels)
    for key in wanted:
        if not entries[key].exported or key not in FORMATS:
            outcome.not_checked.append(key)
            continue
        for result in _check_rows(checked, entries[key], outcome, hook):
            _record(entries[key], result)
    # Write both records last; exports.json keeps the summaries, parity.json everything.
    write_exports(arts, ExportsRecord(arts.name, record.source_model_sha256 or source_sha,
                                      list(entries.values())))
    write_parity(arts, outcome, source_sha)
    return outcome


class _Checked:
    """What every row of one check compares with: the Keras reference on the test images (and,
    for test-time-augmentation exports, Keras under the same averaging, made when first needed)."""

    def __init__(self, arts, source_sha: str, reference: np.ndarray, images: np.ndarray,
                 labels: np.ndarray) -> None:
        self.arts, self.source_sha = arts, source_sha
        self.reference, self.images, self.labels = reference, images, labels
        self._flip_reference: np.ndarray | None = None

    def reference_for(self, fmt) -> np.ndarray:
        if not fmt.tta:
            return self.reference
        if self._flip_reference is None:
            from toolkit.export.tta import mirror

            mirrored = keras_reference(self.arts.model, mirror(self.images))
            self._flip_reference = (self.reference + mirrored) / 2
        return self._flip_reference


def checked_keys(keys: Sequence[str]) -> list[str]:
    """The exports whose files parity runs: a derived export (the C source) stands for its
    source's file, whose parity it shares."""
    return list(dict.fromkeys(FORMATS[k].source or k if k in FORMATS else k for k in keys))


def planned_rows(keys: Sequence[str]) -> list[str]:
    """The rows a check of these exports runs here: each file's primary runtime, and every
    other runtime that is installed (for progress totals)."""
    from toolkit import runtimes

    rows = []
    for key in checked_keys(keys):
        fmt = FORMATS.get(key)
        for i, runtime in enumerate(fmt.runtimes if fmt else ("?",)):
            spec = runtimes.get_runtime(runtime) if i else None
            if spec is None or (spec.parity and spec.available()):
                rows.append(row_name(key, runtime))
    return rows


def _hook(hook: Hook | None, event: str, row: str) -> None:
    if hook:
        hook(event, row)


def _check_rows(checked: _Checked, entry, outcome: SpecParity, hook: Hook | None) -> list[ParityResult]:
    """The export's rows: its primary runtime first, then every other runtime installed here."""
    from toolkit import runtimes

    fmt = FORMATS[entry.key]
    results: list[ParityResult] = []
    for runtime in fmt.runtimes:
        spec = runtimes.get_runtime(runtime)
        if runtime != fmt.runtimes[0] and not spec.parity:
            continue
        why = spec.unavailable_reason() if runtime != fmt.runtimes[0] else ""
        if why:  # not installed, or this machine lacks what it needs (openvino-bf16: native bf16)
            outcome.skipped_rows[row_name(entry.key, runtime)] = why
            continue
        _hook(hook, "start", row_name(entry.key, runtime))
        result = _check_entry(checked, entry, runtime)
        result.row = row_name(entry.key, runtime, result.computes)
        if results:  # not the primary row: compare with it too, on the same file
            _compare_with_primary(result, results[0])
        if runtime == "tflm" and result.top1 is not None:  # it ran: its arena is known whatever it predicted
            result.arena = _arena(checked, result)
        result.predictions = _save_top1(checked.arts, result.name, result.top1)
        results.append(result)
        outcome.results.append(result)
        _hook(hook, "done", result.name)
    return results


def _compare_with_primary(result: ParityResult, primary: ParityResult) -> None:
    result.primary_row = primary.name
    if result.top1 is None or primary.top1 is None:
        return
    differing = np.flatnonzero(np.asarray(result.top1) != np.asarray(primary.top1))
    result.differing_from_primary = int(len(differing))
    result.differing_indices = [int(i) for i in differing[:DIFFERING_LISTED]]


def _arena(checked: _Checked, result: ParityResult) -> dict[str, Any] | None:
    from pathlib import Path

    from toolkit.runtimes import tflm

    try:
        arena = tflm.measure_arena(Path(result.path), checked.images)
    except ArtifactError as exc:
        result.fail(f"arena: {exc.message}")
        return None
    return {**arena.to_dict(), "sha256": result.sha256}


def _record(entry, result: ParityResult) -> None:
    """The row's summary in exports.json: the primary row as `parity`, the others under `rows`."""
    if result.name == entry.key:
        entry.parity = result.summary()
    else:
        entry.rows[result.name] = result.summary()
    if result.arena is not None:
        entry.arena = result.arena


def _save_top1(arts, key: str, top1: np.ndarray | None) -> dict[str, Any] | None:
    """Keep this check's top-1 classes beside parity.json (NAME/predictions/KEY.npy) so any two
    rows can be compared image by image later; a check without outputs leaves no stale file."""
    path = arts.predictions_file(key)
    if top1 is None:
        path.unlink(missing_ok=True)
        return None
    ref = artifacts.save_predictions(path, top1)
    return {**ref, "file": str(path.relative_to(arts.dir))}


def _check_entry(checked: _Checked, entry, runtime: str) -> ParityResult:
    arts = checked.arts
    fmt = FORMATS[entry.key]
    path = arts.dir / entry.path
    if not path.is_file():
        result = ParityResult(key=entry.key, precision=fmt.precision, path=str(path), runtime=runtime)
        result.fail(f"{path} is missing; re-export it: toolkit export --exp {arts.name} --force")
    else:
        file_sha = artifacts.sha256_file(path)  # the export lock keeps it from changing meanwhile
        result = check_file(path, key=entry.key, precision=fmt.precision, runtime=runtime,
                            reference=checked.reference_for(fmt), images=checked.images,
                            labels=checked.labels, contract=fmt.io)
        result.sha256 = file_sha
        result.sha256_matches_export = file_sha == entry.sha256
        if entry.sha256 is None:
            result.fail(f"exports.json records no sha256 for {path.name} (an edited or damaged record); "
                        f"re-export it: toolkit export --exp {arts.name} --force")
        elif not result.sha256_matches_export:
            result.fail(f"{path.name} changed since it was exported (sha256 differs from exports.json)")
    if entry.source_model_sha256 != checked.source_sha:
        result.fail("model.keras changed since this export; re-export it: "
                    f"toolkit export --exp {arts.name} --force")
    return result
