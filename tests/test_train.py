"""Short real trainings on subsets: artifacts, reuse, determinism, interruption and resume, locks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import default_run_id

from toolkit.core import artifacts
from toolkit.core.errors import BusyError, Interrupted, UsageError
from toolkit.specs import get_spec
from toolkit.training import inputs, summary, train

DNN = "DNN_1L_No_Dropout_Exp1"


def test_trained_root_has_complete_runs(trained_root):
    arts = artifacts.spec_artifacts("CNN_1L_Dropout_Exp6", trained_root)
    metrics = arts.require_trained()
    for key in ("test_accuracy", "test_loss", "train_accuracy", "train_loss", "val_accuracy",
                "val_loss", "train_seconds", "epochs", "seed", "params", "versions", "manifest"):
        assert key in metrics, key
    assert metrics["params"] == 11_087_498 and metrics["test_images"] == 10000
    assert metrics["test_accuracy"] > 0.5  # one epoch on 3,000 real images: far above chance
    assert metrics["manifest"]["data"]["t10k-images-idx3-ubyte"].startswith("5b4141f0")
    history = json.loads(arts.history.read_text())
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    run_dir = arts.run_dir(default_run_id("CNN_1L_Dropout_Exp6"))
    # The current run is the kept run itself (hard links), not a second copy.
    assert arts.model.stat().st_ino == (run_dir / "model.keras").stat().st_ino
    # Its per-image test predictions: kept with the run, linked as the current run's, and the
    # accuracy they give is the evaluated one.
    assert arts.test_predictions.stat().st_ino == (run_dir / "test_predictions.npy").stat().st_ino
    top1 = artifacts.load_predictions(arts.test_predictions, metrics["test_predictions"])
    from toolkit.core.data import load

    assert top1.shape == (10_000,) and arts.test_predictions.stat().st_size < 11_000
    assert np.mean(top1 == load().y_test) == pytest.approx(metrics["test_accuracy"], abs=2e-4)
    rows = {r[0]: r for r in summary.comparison_rows(metrics, get_spec("CNN_1L_Dropout_Exp6"))}
    low, high = (float(v) for v in rows["test_accuracy"][2].strip("[]").split(", "))
    assert low < metrics["test_accuracy"] < high


def test_promoting_a_run_without_predictions_removes_the_current_ones(tmp_path):
    """A run written before per-image predictions existed can be current: then no predictions file
    of another run may stay beside it (it simply cannot be paired until parity writes one)."""
    arts = artifacts.spec_artifacts(DNN, tmp_path)
    new, old = arts.run_dir("seed0-e1"), arts.run_dir("seed1-e1")
    for rdir, seed in ((new, 0), (old, 1)):
        rdir.mkdir(parents=True)
        for name in artifacts.RUN_FILES:
            (rdir / name).write_text(json.dumps({"seed": seed}))
    artifacts.save_predictions(new / artifacts.PREDICTIONS_FILE, np.zeros(10, dtype=np.uint8))
    artifacts.promote(arts, new)
    assert arts.test_predictions.is_file()
    artifacts.promote(arts, old)
    assert not arts.test_predictions.exists() and json.loads(arts.metrics.read_text())["seed"] == 1


@pytest.mark.slow
def test_reuse_determinism_and_no_promotion(tmp_path):
    first = train.train(train.TrainRequest(DNN, epochs=1, limit_train=1000, root=tmp_path / "a"))
    again = train.train(train.TrainRequest(DNN, epochs=1, limit_train=1000, root=tmp_path / "a"))
    assert not first.reused and again.reused and again.metrics == first.metrics
    other = train.train(train.TrainRequest(DNN, epochs=1, limit_train=1000, root=tmp_path / "b"))
    assert other.metrics["test_accuracy"] == first.metrics["test_accuracy"]
    assert other.metrics["test_loss"] == first.metrics["test_loss"]
    # A second seed trained without promotion leaves seed 0 as the current run.
    seed1 = train.train(train.TrainRequest(DNN, seed=1, epochs=1, limit_train=1000, root=tmp_path / "a"),
                        promote=False)
    current = artifacts.spec_artifacts(DNN, tmp_path / "a").require_trained()
    assert current["seed"] == 0 and seed1.metrics["seed"] == 1
    assert seed1.run_dir.name == "seed1-e1-n1000" and seed1.run_dir.is_dir()


@pytest.mark.slow
def test_interrupt_keeps_previous_run_and_resume_finishes(tmp_path):
    root = tmp_path / "arts"
    previous = train.train(train.TrainRequest(DNN, epochs=1, limit_train=1000, root=root))
    arts = artifacts.spec_artifacts(DNN, root)
    before = arts.metrics.read_bytes()

    def interrupt_after_first(epoch, total, logs):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="--resume"):
        train.train(train.TrainRequest(DNN, epochs=3, limit_train=1000, root=root),
                    on_epoch=interrupt_after_first)
    assert arts.metrics.read_bytes() == before  # the complete run is untouched
    assert not arts.run_dir("seed0-e3-n1000").exists()
    partial = arts.partial_dir("seed0-e3-n1000")
    assert json.loads((partial / "progress.json").read_text())["epochs_done"] == 1
    seen = []
    resumed = train.train(train.TrainRequest(DNN, epochs=3, limit_train=1000, root=root, resume=True),
                          on_epoch=lambda e, t, logs: seen.append(e))
    assert seen == [2, 3]  # epoch 1 was not trained again
    history = json.loads((resumed.run_dir / "history.json").read_text())
    assert len(history["loss"]) == 3 and not partial.exists()
    assert resumed.metrics["resumed_from_epoch"] == 1
    assert arts.require_trained()["run_id"] == "seed0-e3-n1000" != previous.metrics["run_id"]
    leftovers = [p.name for p in arts.runs_dir.iterdir() if ".staging" in p.name or ".tmp" in p.name]
    assert leftovers == []


@pytest.mark.slow
def test_second_training_of_same_run_is_refused(tmp_path):
    arts = artifacts.spec_artifacts(DNN, tmp_path)
    with artifacts.exclusive_lock(arts.lock_file("seed0-e1-n1000"), what="holder"):
        with pytest.raises(BusyError, match="is busy"):
            train.train(train.TrainRequest(DNN, epochs=1, limit_train=1000, root=tmp_path))
        # Another seed of the same spec is a different run and may train side by side.
        ok = train.train(train.TrainRequest(DNN, seed=2, epochs=1, limit_train=1000, root=tmp_path))
        assert ok.metrics["seed"] == 2


@pytest.mark.slow
def test_augmented_spec_trains_and_exports_clean_model(tmp_path):
    from toolkit.specs.models import load_model

    result = train.train(train.TrainRequest("CNN_1L_Dropout_DA_Exp7", epochs=1, limit_train=600,
                                            root=tmp_path))
    model = load_model(result.run_dir / "model.keras")
    assert not any("Random" in layer.__class__.__name__ for layer in model.layers)
    assert result.metrics["test_accuracy"] > 0.2


def test_split_is_seeded_and_disjoint():
    tr, va = inputs.split_indices(60000, seed=0, fraction=0.1, limit_train=None)
    assert len(va) == 6000 and len(tr) == 54000 and not set(tr) & set(va)
    tr2, va2 = inputs.split_indices(60000, seed=0, fraction=0.1, limit_train=None)
    assert np.array_equal(va, va2)
    _, va3 = inputs.split_indices(60000, seed=1, fraction=0.1, limit_train=None)
    assert not np.array_equal(va, va3)
    with pytest.raises(UsageError):
        inputs.split_indices(60000, seed=0, fraction=0.1, limit_train=5)


@pytest.mark.slow
def test_an_interrupted_run_resumes_by_default_and_restart_says_what_it_discards(tmp_path):
    """Rerunning an interrupted command (no --resume) continues it, saying so; --restart starts over,
    saying how many epochs it discards; staging folders of a killed commit are cleaned."""
    root = tmp_path / "arts"
    arts = artifacts.spec_artifacts(DNN, root)

    def interrupt_after_first(epoch, total, logs):
        if epoch == 1:
            raise KeyboardInterrupt

    request = train.TrainRequest(DNN, epochs=3, limit_train=1000, root=root)
    with pytest.raises(Interrupted, match="continues it"):
        train.train(request, on_epoch=interrupt_after_first)
    stale = arts.runs_dir / ".seed0-e3-n1000.staging-killed"  # what a kill -9 during the commit leaves
    stale.mkdir()
    (stale / "model.keras").write_bytes(b"partial")
    seen: list[int] = []
    with pytest.warns(UserWarning, match="resuming the interrupted run from epoch 1 of 3"):
        resumed = train.train(request, on_epoch=lambda e, t, logs: seen.append(e))
    assert seen == [2, 3] and resumed.metrics["resumed_from_epoch"] == 1
    assert not stale.exists()

    with pytest.raises(Interrupted):
        train.train(train.TrainRequest(DNN, epochs=2, limit_train=1000, root=root),
                    on_epoch=interrupt_after_first)
    seen.clear()
    discarding = r"discarding the interrupted run's 1 completed epoch\(s\).*--restart"
    with pytest.warns(UserWarning, match=discarding):
        restarted = train.train(train.TrainRequest(DNN, epochs=2, limit_train=1000, root=root, resume=False),
                                on_epoch=lambda e, t, logs: seen.append(e))
    assert seen == [1, 2] and restarted.metrics.get("resumed_from_epoch") is None
