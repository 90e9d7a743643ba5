"""Time-to-accuracy levers (issue 21): the new recipe fields (EMA of the weights, linear and
one-cycle schedules, BatchNorm momentum, a whitened first convolution), the flip test-time
augmentation exports, and the time-to-accuracy benchmark kind."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import copy_spec
from typer.testing import CliRunner

from toolkit.cli.app import app
from toolkit.core.errors import UsageError
from toolkit.specs.recipe import SEED_RECIPE, Recipe, parse_overrides

runner = CliRunner()


# ---------------------------------------------------------------- recipe fields


@pytest.mark.parametrize("changes,needle", [
    ({"ema": 1.0}, "ema must be in [0, 1)"),
    ({"bn_momentum": 0.0}, "bn_momentum must be in (0, 1)"),
    ({"whiten_stem": "yes"}, "whiten_stem must be true or false"),
    ({"schedule": "onecycle"}, "onecycle rises over warmup_epochs"),
    ({"schedule": "step"}, "schedule must be one of"),
])
def test_bad_lever_values_name_the_field(changes, needle):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Recipe(**changes)


def test_levers_enter_the_manifest_only_when_set():
    assert not {"ema", "bn_momentum", "whiten_stem"} & set(SEED_RECIPE.manifest_fields())
    recipe = Recipe(**parse_overrides(["ema=0.999", "bn_momentum=0.9", "whiten_stem=true",
                                       "schedule=linear"]))
    assert {"ema": 0.999, "bn_momentum": 0.9, "whiten_stem": True, "schedule": "linear"}.items() <= \
        recipe.manifest_fields().items()
    assert "ema 0.999" in recipe.describe() and "whitened stem" in recipe.describe()


def test_linear_and_onecycle_rates():
    from toolkit.training.fitting import WARMUP_START, rate_at

    linear = Recipe(optimizer="sgd", learning_rate=0.1, schedule="linear", epochs=10)
    rates = [rate_at(linear, step, 100, 10) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.001)
    assert rates == sorted(rates)[::-1]
    cycle = Recipe(optimizer="sgd", learning_rate=0.1, schedule="onecycle", warmup_epochs=3, epochs=10)
    rates = [rate_at(cycle, step, 100, 10) for step in range(100)]
    assert rates[0] == pytest.approx(0.1 * WARMUP_START) and max(rates) == pytest.approx(0.1)
    assert int(np.argmax(rates)) == 30 and rates[-1] == pytest.approx(0.1 / 70)


def test_whitening_filters_decorrelate_patches(dataset):
    from toolkit.core.data import to_model_input
    from toolkit.training.fitting import whitening_kernel

    images = to_model_input(dataset.x_train[:2000])
    kernel = np.random.default_rng(0).normal(size=(3, 3, 1, 24)).astype(np.float32)
    whitened = whitening_kernel(images, kernel)
    assert whitened.shape == kernel.shape and np.array_equal(whitened[..., 18:], kernel[..., 18:])
    filters = whitened[..., :9].reshape(9, 9)
    assert np.allclose(whitened[..., 9:18].reshape(9, 9), -filters)  # each with its negative
    rng = np.random.default_rng(1)
    patches = np.stack([images[i, r:r + 3, c:c + 3, 0].ravel() for i, r, c in
                        zip(rng.integers(0, 2000, 5000), rng.integers(0, 26, 5000), rng.integers(0, 26, 5000),
                            strict=True)])
    responses = (patches - patches.mean(0)) @ filters
    cov = np.cov(responses, rowvar=False)
    off_diagonal = cov - np.diag(np.diag(cov))
    assert np.abs(off_diagonal).max() < 0.1 * np.diag(cov).max()  # whitened: nearly uncorrelated


# ---------------------------------------------------------------- a short training with every lever


@pytest.mark.slow
def test_a_run_with_every_lever_trains_saves_and_selects_the_averaged_weights(tmp_path):
    from toolkit.training.train import TrainRequest, train

    recipe = parse_overrides(["ema=0.9", "schedule=onecycle", "warmup_epochs=0.5", "bn_momentum=0.9",
                              "whiten_stem=true"])
    result = train(TrainRequest("fast", epochs=2, limit_train=600, root=tmp_path, recipe=recipe,
                                mixed_precision="off"))
    metrics = result.metrics
    assert metrics["manifest"]["spec"]["ema"] == 0.9 and metrics["selected_epoch"] in (1, 2)
    assert 0.1 < metrics["test_accuracy"] <= 1
    from toolkit.specs.models import load_model

    model = load_model(result.run_dir / "model.keras")  # stock Keras loads it (plain float rate)
    assert model.count_params() == metrics["params"]
    momenta = {layer.momentum for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"}
    assert momenta == {0.9}


# ---------------------------------------------------------------- test-time augmentation exports


def test_tta_variants_are_opt_in_keys_of_their_own():
    from toolkit.export.registry import FORMATS, select

    assert not any(f.tta for f in select(["all"], ["all"]))
    keys = [f.key for f in select(["onnx", "tflite"], ["fp32", "int8"], tta=True)]
    assert keys[-2:] == ["onnx-tta", "tflite-int8-tta"]
    assert FORMATS["onnx-tta"].filename == "model.fp32.tta.onnx"
    with pytest.raises(UsageError, match="--tta"):
        select(["tflite"], ["fp16"], tta=True)


@pytest.mark.slow
def test_tta_export_matches_keras_under_the_same_averaging(trained_root, tmp_path):
    spec = "DNN_2L_Dropout_Exp2"
    root = copy_spec(trained_root, tmp_path, spec)
    result = runner.invoke(app, ["export", "--exp", spec, "--format", "onnx", "--tta", "--artifacts",
                                 str(root)])
    entries = {e["key"]: e for e in json.loads((root / spec / "exports.json").read_text())["exports"]}
    tta = entries["onnx-tta"]
    assert tta["status"] == "exported" and tta["parity"]["status"] == "pass", result.output
    assert tta["parity"]["max_abs_diff"] < 1e-4 and tta["test_time_augmentation"].startswith("flip")
    plain = entries["onnx-fp32"]["parity"]
    # Its reference is Keras under flip averaging, not the plain model: another accuracy.
    assert tta["parity"]["keras_accuracy"] != plain["keras_accuracy"]
    # The benchmark checks its top-1 against that same averaged reference (against the plain
    # model, a flip TTA file "flipped" ~1.6% of frontier's images).
    from toolkit.benchmark.context import BenchContext
    from toolkit.benchmark.plan import BenchCase

    ctx = BenchContext.create(root, n_images=64)
    path = str(root / spec / tta["path"])
    case = BenchCase(spec=spec, key="onnx-tta", format="onnx", precision="fp32", runtime="onnxruntime",
                     device="cpu", batch=64, threads=1, path=path, size_bytes=tta["size_bytes"],
                     sha256=tta["sha256"], parity="pass", trained=True)
    from toolkit import runtimes
    from toolkit.export.tta import mirror

    reference = ctx.reference(case)
    assert "mirror" in ctx.reference_source[f"{spec}+flip"]
    model = runtimes.load(path, "onnxruntime", threads=1)
    np.testing.assert_array_equal(reference, model.run(ctx.images[: len(reference)]).argmax(1))
    keras = runtimes.load(root / spec / "model.keras", "keras")
    images = ctx.images[: len(reference)]
    np.testing.assert_array_equal(reference, ((keras.run(images) + keras.run(mirror(images))) / 2).argmax(1))


# ---------------------------------------------------------------- time to accuracy


@pytest.mark.slow
def test_time_to_accuracy_kind_trains_each_seed_and_records_it(tmp_path):
    args = ["bench", "--kind", "time-to-accuracy", "--exp", "DNN_1L_No_Dropout_Exp1", "--seeds", "2",
            "--epochs",
            "1", "--limit-train", "500", "--threshold", "0.05", "--artifacts", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from toolkit.benchmark.time_to_accuracy import read_results, summarize

    results = read_results(tmp_path)
    assert [r.seed for r in results] == [0, 1] and all(r.reached and not r.reused for r in results)
    (summary,) = summarize(results)
    assert summary.seeds == 2 and summary.reached == 2 and summary.minutes_low <= summary.minutes_mean
    again = runner.invoke(app, args)  # the completed runs are reused, and said to be
    assert again.exit_code == 0 and "reused" in again.output
    shutil.rmtree(tmp_path / "bench")
    assert runner.invoke(app, ["bench", "--kind", "time-to-accuracy", "--artifacts",
                               str(tmp_path)]).exit_code == 2
