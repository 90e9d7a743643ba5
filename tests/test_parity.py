"""Parity: the value checks on their own, and the CLI's pass/fail paths on real exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.cli.app import app
from toolkit.export.parity import TOLERANCES, ParityResult, compare

runner = CliRunner()
SPEC = "DNN_2L_Dropout_Exp2"


def _probs(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 10)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs.astype(np.float32), probs.argmax(1)


def test_tolerances_are_data_per_precision():
    assert TOLERANCES["fp32"].min_agreement == 0.999 and TOLERANCES["fp32"].max_abs_diff == 1e-4
    for prec in ("fp16", "int8", "dynamic"):
        assert TOLERANCES[prec].min_agreement == 0.99
        assert TOLERANCES[prec].max_accuracy_drop_pp == 0.5


def test_identical_outputs_pass():
    ref, labels = _probs()
    result = compare(ParityResult("onnx-fp32", "fp32", "x"), ref, ref.copy(), labels)
    assert result.passed and result.failures == []
    assert result.max_abs_diff == 0 and result.agreement == 1 and result.flipped == 0
    assert result.test_accuracy == result.keras_accuracy == 1.0


def test_fp32_value_failures_say_by_how_much():
    ref, labels = _probs()
    cand = ref.copy()
    cand[:, 0] += 3e-4  # over the fp32 tolerance, no top-1 change for most images
    cand[:5] = cand[:5, ::-1]  # five flipped predictions: agreement 99.75% < 99.9%
    result = compare(ParityResult("onnx-fp32", "fp32", "x"), ref, cand, labels)
    assert not result.passed and len(result.failures) == 2  # every failure collected
    text = " ".join(result.failures)
    assert "top-1 agreement 99.75% < 99.90%" in text and "short by 0.15 pp" in text
    assert "max abs difference" in text and "x the tolerance" in text
    assert result.flipped == 5 and result.flipped_indices == [0, 1, 2, 3, 4]
    assert result.would_pass_with["min_agreement"] == pytest.approx(0.9975)
    assert result.would_pass_with["max_abs_diff"] == pytest.approx(result.max_abs_diff)


def test_quantized_accuracy_drop_and_non_finite_fail():
    ref, labels = _probs()
    cand = ref.copy()
    cand[:30] = cand[:30, ::-1]  # 1.5% flipped -> agreement 98.5%, accuracy -1.5 pp
    cand[40, 3] = np.nan
    result = compare(ParityResult("tflite-int8", "int8", "x"), ref, cand, labels)
    text = " ".join(result.failures)
    assert "non-finite outputs: 1 NaN" in text
    assert "top-1 agreement" in text and "pp below Keras" in text and "over by 1.0" in text
    assert result.accuracy_delta_pp == pytest.approx(-1.55, abs=0.01)
    # A quantized export is not held to the fp32 abs-diff tolerance.
    small = ref.copy()
    small[:, 0] += 0.01
    assert compare(ParityResult("onnx-int8", "int8", "x"), ref, small, labels).passed


# ---------------------------------------------------------------- CLI on real exports


@pytest.fixture
def exported_root(trained_root, tmp_path) -> Path:
    root = tmp_path / "artifacts"
    shutil.copytree(trained_root / SPEC, root / SPEC, ignore=shutil.ignore_patterns("runs"))
    result = runner.invoke(app, ["export", "--exp", SPEC, "--format", "onnx", "--artifacts", str(root)])
    assert result.exit_code == 0, result.output
    return root


def _entries(root: Path) -> dict:
    return {e["key"]: e for e in json.loads((root / SPEC / "exports.json").read_text())["exports"]}


def test_parity_command_passes_and_writes_parity_json(exported_root):
    result = runner.invoke(app, ["parity", "--exp", SPEC, "--artifacts", str(exported_root)])
    assert result.exit_code == 0, result.output
    assert "passed" in result.output and "onnx-fp32" in result.output
    doc = json.loads((exported_root / SPEC / "parity.json").read_text())
    # The file's primary row (ONNX Runtime), and its rows on the other runtimes installed here.
    assert {r["key"] for r in doc["exports"]} == {"onnx-fp32"}
    entry = next(r for r in doc["exports"] if r["row"] == "onnx-fp32")
    assert entry["key"] == "onnx-fp32" and entry["status"] == "pass" and entry["images"] == 10_000
    assert entry["input_name"] == "image" and entry["output_names"] == ["probabilities"]
    assert entry["output_shape"] == [10_000, 10]
    assert doc["tolerances"]["fp32"] == {"min_agreement": 0.999, "max_abs_diff": 1e-4}
    # Each file's top-1 classes are kept beside the record, with the paired test against Keras.
    from toolkit.core import artifacts
    from toolkit.core.data import load

    labels = load().y_test
    export_top1 = artifacts.load_predictions(exported_root / SPEC / entry["predictions"]["file"],
                                             entry["predictions"])
    keras_top1 = artifacts.load_predictions(exported_root / SPEC / doc["keras"]["predictions"]["file"],
                                            doc["keras"]["predictions"])
    assert export_top1.dtype == np.uint8 and export_top1.shape == (10_000,)
    assert np.mean(export_top1 == labels) == pytest.approx(entry["test_accuracy"])
    assert np.mean(keras_top1 == labels) == pytest.approx(doc["keras"]["test_accuracy"])
    b, c = entry["discordant"]
    assert b == np.sum((keras_top1 == labels) & (export_top1 != labels)) and entry["mcnemar_p"] == 1.0
    assert c == 0 and entry["accuracy_ci"][0] < entry["test_accuracy"] < entry["accuracy_ci"][1]
    flat = " ".join(result.output.split())
    assert "McNemar p" in flat and "1.000 (0/0)" in flat and "95% CI" in flat
    half = (entry["accuracy_ci"][1] - entry["accuracy_ci"][0]) * 50
    assert f"{entry['test_accuracy']:.2%} ±{half:.2f}" in flat


def test_perturbed_model_fails_parity_with_exit_5(exported_root):
    """An ONNX file whose weights were nudged must fail, and be marked failed in exports.json."""
    import onnx
    from onnx import numpy_helper

    path = exported_root / SPEC / "export" / "model.fp32.onnx"
    proto = onnx.load(str(path))
    weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(weight)
    noisy = array + np.random.default_rng(0).normal(scale=0.05, size=array.shape).astype(array.dtype)
    weight.CopyFrom(numpy_helper.from_array(noisy, weight.name))
    onnx.save(proto, str(path))
    result = runner.invoke(app, ["parity", "--exp", SPEC, "--format", "onnx",
                                 "--artifacts", str(exported_root)])
    assert result.exit_code == 5, result.output
    flat = " ".join(result.output.split())
    assert "exported but parity failed" in flat and "max abs difference" in flat
    assert "parity failed for DNN_2L_Dropout_Exp2/onnx-fp32" in flat
    parity = _entries(exported_root)["onnx-fp32"]["parity"]
    assert parity["status"] == "fail" and parity["passed"] is False
    assert any("max abs difference" in f for f in parity["failures"])
    assert any("changed since it was exported" in f for f in parity["failures"])


def test_corrupted_export_fails_parity_naming_the_file(exported_root):
    path = exported_root / SPEC / "export" / "model.fp32.onnx"
    path.write_bytes(b"\x08\x07garbage, not a protobuf")
    result = runner.invoke(app, ["parity", "--exp", SPEC, "--artifacts", str(exported_root)])
    assert result.exit_code == 5, result.output
    assert "cannot load" in result.output and "Traceback" not in result.output
    failures = _entries(exported_root)["onnx-fp32"]["parity"]["failures"]
    assert any("model.fp32.onnx: not a loadable ONNX model" in f for f in failures)


def test_parity_without_exports_names_the_export_command(trained_root, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(trained_root / SPEC, root / SPEC, ignore=shutil.ignore_patterns("runs"))
    result = runner.invoke(app, ["parity", "--exp", SPEC, "--artifacts", str(root)])
    assert result.exit_code == 4 and "toolkit export --exp DNN_2L_Dropout_Exp2" in result.output


def test_parity_rejects_unknown_format(exported_root):
    result = runner.invoke(app, ["parity", "--format", "coreml", "--artifacts", str(exported_root)])
    assert result.exit_code == 2 and "onnx-fp32" in result.output


def test_7_parity_of_a_replaced_file_is_not_believed(exported_root):
    """An export killed after renaming its new file into place but before rewriting exports.json
    leaves a "pass" that was measured on the old file: every reader must see it as stale."""
    import onnx

    from toolkit.benchmark.plan import Filters, plan_cases
    from toolkit.core import artifacts
    from toolkit.export.onnx import set_metadata
    from toolkit.export.record import read_exports
    from toolkit.report import join as report_join

    arts = artifacts.spec_artifacts(SPEC, exported_root)
    path = exported_root / SPEC / "export" / "model.fp32.onnx"
    entry = read_exports(arts).by_key()["onnx-fp32"]
    old_sha = artifacts.sha256_file(path)
    assert entry.parity.sha256 == old_sha and entry.parity_state(old_sha) == "pass"
    proto = onnx.load(str(path))
    set_metadata(proto, {"exported_at": "a later export, killed before exports.json was rewritten"})
    onnx.save(proto, str(path))
    new_sha = artifacts.sha256_file(path)

    assert read_exports(arts).by_key()["onnx-fp32"].parity_state(new_sha) == "stale"
    (case,) = plan_cases(exported_root, Filters(formats=["onnx-fp32"], runtime_keys=["onnxruntime"],
                                                devices=("cpu",), batches=(1,), threads=(1,)))
    assert case.parity == "stale" and case.sha256 == new_sha  # the bench records what it measured
    notes: list[str] = []
    files = {f.key: f for f in report_join._files(arts, 0.9, notes)}
    assert files["onnx-fp32"].parity == "stale" and files["onnx-fp32"].accuracy is None
    assert any("changed since parity checked it" in n for n in notes)
    # `toolkit export` does not skip the replaced file: its sha256 no longer matches its entry.
    result = runner.invoke(app, ["export", "--exp", SPEC, "--format", "onnx",
                                 "--artifacts", str(exported_root)])
    assert result.exit_code == 0, result.output
    assert "unchanged, skipped" not in result.output
    entry = read_exports(arts).by_key()["onnx-fp32"]
    assert entry.parity_state(artifacts.sha256_file(path)) == "pass"
    parity = json.loads((exported_root / SPEC / "parity.json").read_text())
    assert parity["exports"][0]["sha256"] == artifacts.sha256_file(path)
