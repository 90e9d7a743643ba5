"""Training recipes as data: validation by field, overrides, what they mean in Keras (optimizer,
schedule, targets, augmentation), best-epoch selection on the validation holdout only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit import specs
from toolkit.cli.app import app
from toolkit.core import artifacts
from toolkit.core.errors import UsageError
from toolkit.specs import recipe
from toolkit.specs.recipe import Recipe

runner = CliRunner()


def test_the_seed_recipe_is_the_default_and_its_manifest_fields_are_the_seed_four():
    assert all(s.recipe.changed(recipe.SEED_RECIPE).keys() <= {"optimizer", "augment"}
               for s in specs.study_specs())
    seed_four = {"optimizer": "adam", "batch_size": 512, "augment": False, "epochs": 20}
    assert Recipe().manifest_fields() == seed_four
    custom = Recipe(optimizer="sgd", learning_rate=0.1, selection="best")
    assert custom.manifest_fields() == {"optimizer": "sgd", "batch_size": 512, "augment": False, "epochs": 20,
                                        "learning_rate": 0.1, "selection": "best"}


@pytest.mark.parametrize("fields,needle", [
    ({"weight_decay": -0.1}, "weight_decay must be in [0, 1), got -0.1"),
    ({"optimizer": "lamb"}, "optimizer must be one of adam, rmsprop, adamw, sgd; got 'lamb'"),
    ({"schedule": "step"}, "schedule must be one of constant, cosine, linear, onecycle; got 'step'"),
    ({"selection": "test"}, "selection must be one of last, best; got 'test'"),
    ({"warmup_epochs": 2}, "warmup_epochs needs a schedule"),
    ({"schedule": "cosine", "warmup_epochs": -1}, "warmup_epochs must be >= 0"),
    ({"augment": True, "flip": True}, "cannot be combined with crop_padding, flip or erasing"),
    ({"crop_padding": 12}, "crop_padding must be an integer in 0..8"),
    ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1)"),
    ({"momentum": 0.5}, "momentum and nesterov apply to optimizer sgd only"),
    ({"distill_alpha": 0.9}, "apply with a teacher only"),
    ({"teacher": "x", "distill_temperature": 0}, "distill_temperature must be > 0"),
    ({"learning_rate": -1.0}, "learning_rate must be a positive number"),
    ({"epochs": 0}, "epochs must be a positive integer"),
])
def test_bad_recipe_values_name_the_field_and_the_allowed_values(fields, needle):
    with pytest.raises(UsageError) as info:
        Recipe(**fields)
    assert needle in info.value.message and "\n" not in info.value.message


def test_overrides_are_typed_and_unknown_fields_listed():
    parsed = recipe.parse_overrides(["optimizer=sgd", "learning-rate=0.05", "flip=yes", "crop_padding=2",
                                     "teacher=none"])
    assert parsed == {"optimizer": "sgd", "learning_rate": 0.05, "flip": True, "crop_padding": 2,
                      "teacher": None}
    with pytest.raises(UsageError, match="unknown recipe field 'lr'; allowed: optimizer, batch_size"):
        recipe.parse_overrides(["lr=0.1"])
    with pytest.raises(UsageError, match=r"recipe field epochs='many': expected an integer"):
        recipe.parse_overrides(["epochs=many"])
    with pytest.raises(UsageError, match="expected FIELD=VALUE"):
        recipe.parse_overrides(["sgd"])


def test_a_changed_recipe_gets_its_own_run_id_and_the_spec_its_own():
    fast = specs.get_spec("fast")
    assert specs.run_variant(fast) is None
    assert specs.run_variant(specs.get_spec("CNN_1L_Dropout_Exp6")) is None
    assert specs.run_variant(specs.with_overrides(fast, epochs=3)) is None  # epochs are in the id already
    tag = specs.run_variant(specs.with_overrides(fast, learning_rate=0.01))
    assert tag and tag.startswith("r")
    assert tag == specs.run_variant(specs.with_overrides(fast, learning_rate=0.01))  # stable
    assert artifacts.run_id(0, 30, None, variant=tag) == f"seed0-e30-{tag}"


@pytest.mark.parametrize("args,needle", [
    (["--recipe", "weight_decay=-0.1"], "weight_decay must be in [0, 1), got -0.1"),
    (["--recipe", "bogus=1"], "unknown recipe field 'bogus'; allowed:"),
    (["--teacher", "fast"], "fast cannot distil from itself"),
    (["--teacher", "fsat"], "closest: fast"),
])
def test_bad_recipes_stop_train_before_any_work(tmp_path, args, needle):
    result = runner.invoke(app, ["train", "--exp", "fast", "--epochs", "1", "--limit-train", "100",
                                 "--artifacts", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "fast").exists()


# ---------------------------------------------------------------- what a recipe means in Keras


def test_seed_recipe_compiles_exactly_as_the_seed_did():
    from toolkit.training import fitting

    assert fitting.make_optimizer(Recipe(), 100) == "adam"
    assert fitting.make_optimizer(Recipe(optimizer="rmsprop"), 100) == "rmsprop"
    labels = np.array([3, 1])
    assert fitting.targets(Recipe(), labels).tolist() == [3, 1]  # integer labels, sparse loss


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from toolkit.training import fitting

    sgd = Recipe(optimizer="sgd", learning_rate=0.1, schedule="cosine", warmup_epochs=1, weight_decay=5e-4,
                 epochs=10)
    opt = fitting.make_optimizer(sgd, steps_per_epoch=50)
    schedule = opt.learning_rate if callable(opt.learning_rate) else opt._learning_rate
    rate = [float(schedule(step)) for step in (0, 50, 275, 500)]
    assert rate[0] == pytest.approx(0.005) and rate[1] == pytest.approx(0.1)
    assert 0.02 < rate[2] < 0.08 and rate[3] == pytest.approx(0.0, abs=1e-6)
    assert opt.nesterov and opt.momentum == 0.9 and opt.weight_decay == pytest.approx(5e-4)


def test_targets_smooth_labels_and_blend_a_teacher():
    from toolkit.training import fitting

    labels = np.array([0, 2])
    smoothed = fitting.targets(Recipe(label_smoothing=0.1), labels)
    assert smoothed[0, 0] == pytest.approx(0.91) and smoothed[0, 1] == pytest.approx(0.01)
    teacher = np.full((2, 10), 0.1, dtype=np.float32)
    blended = fitting.targets(Recipe(teacher="t", distill_alpha=0.25), labels, teacher)
    assert blended[1, 2] == pytest.approx(0.25 * 0.1 + 0.75) and np.allclose(blended.sum(1), 1)


def test_augmentation_is_seeded_per_step_and_keeps_the_images_real(test_batch):
    from toolkit.core.tf import tf
    from toolkit.training import augment

    images = tf.constant(test_batch[0][:32])
    fn = augment.batch_augmenter(Recipe(crop_padding=2, flip=True, erasing=1.0), seed=0)
    a, b = fn(images, 3, 7).numpy(), fn(images, 3, 7).numpy()
    c = fn(images, 3, 8).numpy()
    assert a.shape == (32, 28, 28, 1) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    crop = augment.random_crop(images, tf.constant([1, 2], tf.int64), 2).numpy()
    # A crop is a shift: every image's pixel mass is kept except what moved past the 2-pixel border.
    assert np.all(crop.sum(axis=(1, 2, 3)) <= images.numpy().sum(axis=(1, 2, 3)) + 1e-3)
    flipped = augment.random_flip(images, tf.constant([5, 5], tf.int64)).numpy()
    pairs = zip(flipped, images.numpy(), strict=True)
    same = [np.array_equal(f, i) or np.array_equal(f, i[:, ::-1]) for f, i in pairs]
    assert all(same)
    assert not np.array_equal(flipped, images.numpy())  # some were mirrored
    assert augment.batch_augmenter(Recipe(), seed=0) is None


# ---------------------------------------------------------------- selection (trains: slow)


@pytest.mark.slow
def test_best_epoch_is_chosen_on_validation_and_is_the_model_saved(tmp_path, dataset):
    from toolkit.core.data import to_model_input
    from toolkit.specs.models import load_model
    from toolkit.training import train

    # Keep the best of 3 epochs on a small subset; the test set must play no part in the choice.
    request = train.TrainRequest("DNN_1L_No_Dropout_Exp1", epochs=3, limit_train=600, root=tmp_path,
                                 recipe={"selection": "best", "learning_rate": 0.05})
    result = train.train(request)
    metrics, run_dir = result.metrics, result.run_dir
    history = json.loads((run_dir / "history.json").read_text())
    best = int(np.argmax(history["val_accuracy"])) + 1
    assert metrics["selection"] == "best" and metrics["selected_epoch"] == best
    assert metrics["val_accuracy"] == history["val_accuracy"][best - 1]
    assert run_dir.name.startswith("seed0-e3-n600-r")  # its own run id: not the spec's own recipe
    model = load_model(run_dir / "model.keras")
    probs = model.predict(to_model_input(dataset.x_test), batch_size=2000, verbose=0)
    accuracy = float(np.mean(probs.argmax(1) == dataset.y_test))
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_a_weight_decay_recipe_resumes_after_an_interruption(tmp_path):
    """Keras forgets an optimizer's weight-decay exclusions when it reloads a saved one: resuming
    restores the state into a fresh build of the recipe's optimizer, and the run completes."""
    from toolkit.core.errors import Interrupted
    from toolkit.training import train

    def stop_after_first(epoch, total, logs):
        if epoch == 1:
            raise KeyboardInterrupt

    kwargs = dict(epochs=2, limit_train=300, root=tmp_path, mixed_precision="off")
    with pytest.raises(Interrupted):
        train.train(train.TrainRequest("fast", **kwargs), on_epoch=stop_after_first)
    resumed = train.train(train.TrainRequest("fast", resume=True, **kwargs))
    assert resumed.metrics["resumed_from_epoch"] == 1 and resumed.metrics["selected_epoch"] in (1, 2)
    assert resumed.run_dir.name == "seed0-e2-n300"
