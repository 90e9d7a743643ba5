"""The 17 seed specs (and the new ones): names, readings, validation, and that each builds what it
describes."""

from __future__ import annotations

import pytest

from toolkit import specs
from toolkit.core.errors import UsageError
from toolkit.specs.study import DEFAULT_L2

SEED_NAMES = [
    "DNN_1L_No_Dropout_Exp1", "DNN_2L_No_Dropout_Exp1", "DNN_2L_Dropout_Exp2",
    "DNN_2L_No_Dropout_Exp3", "DNN_2L_Dropout_Exp4", "DNN_2L_Dropout_Exp5",
    "DNN_3L_No_Dropout_Exp1", "DNN_3L_Dropout_Exp2", "DNN_3L_Dropout_Exp3",
    "CNN_2L_No_Dropout_Exp1", "CNN_2L_Dropout_Exp2", "CNN_2L_No_Dropout_Exp3",
    "CNN_3L_No_Dropout_Exp4", "CNN_3L_Dropout_Exp5", "CNN_1L_Dropout_Exp6",
    "CNN_1L_Dropout_DA_Exp7", "CNN_2L_Dropout_DA_Exp8",
]


def test_all_seventeen_seed_names():
    assert [s.name for s in specs.study_specs()] == SEED_NAMES == list(specs.SPECS)[:17]
    assert all(s.origin == "study" and s.reported for s in specs.study_specs())
    assert {"embedded", "frontier", "fast"} <= {s.name for s in specs.SPECS.values() if s.origin == "new"}


def test_chosen_spec_matches_the_seed():
    exp6 = specs.get_spec("CNN_1L_Dropout_Exp6")
    arch = exp6.arch
    assert arch.conv_filters == (64,) and arch.dense_units == (1024,) and arch.dropout == (0.5,)
    assert exp6.batch_size == 512 and exp6.optimizer == "adam" and exp6.epochs == 20
    assert exp6.reported.test_accuracy == pytest.approx(0.9137)
    # Conv 3x3x1x64 + dense 13*13*64 -> 1024 + 1024 -> 10, by hand.
    assert exp6.param_count() == 640 + (10816 * 1024 + 1024) + (1024 * 10 + 10) == 11_087_498
    assert exp6.mflops_per_image() == pytest.approx(22.95, abs=0.01)


def test_ocr_readings_are_recorded_next_to_values():
    exp5 = specs.get_spec("DNN_2L_Dropout_Exp5")
    assert exp5.arch.dense_units == (128, 256) and exp5.arch.l2 == (0.0, DEFAULT_L2)
    assert any("238" in r for r in exp5.readings) and any("L2" in r for r in exp5.readings)
    exp3 = specs.get_spec("CNN_2L_No_Dropout_Exp3")
    assert exp3.arch.dense_units == (1024, 64) and any("1024,54" in r for r in exp3.readings)
    assert not exp3.augment  # not a "DA" spec (its reading once landed in `augment` by mistake)
    assert specs.get_spec("DNN_1L_No_Dropout_Exp1").arch.dense_units == (64,)
    assert specs.get_spec("CNN_1L_Dropout_DA_Exp7").augment


def test_unknown_name_lists_closest():
    with pytest.raises(UsageError, match="closest: CNN_1L_Dropout_Exp6"):
        specs.get_spec("CNN_1L_Dropout_Exp66")


def test_invalid_spec_is_rejected_when_built():
    with pytest.raises(UsageError, match="dropout rates must be in"):
        specs.with_overrides(specs.get_spec("CNN_1L_Dropout_Exp6"), dropout=(1.5,))
    with pytest.raises(UsageError, match="epochs must be a positive integer"):
        specs.with_overrides(specs.get_spec("CNN_1L_Dropout_Exp6"), epochs=0)
    with pytest.raises(UsageError, match="unknown spec field"):
        specs.with_overrides(specs.get_spec("CNN_1L_Dropout_Exp6"), epoch=3)


def test_overrides_keep_frozen_original():
    base = specs.get_spec("DNN_1L_No_Dropout_Exp1")
    changed = specs.with_overrides(base, epochs=3, batch_size=None)
    assert changed.epochs == 3 and base.epochs == 20 and changed.batch_size == base.batch_size


def test_glob_matching():
    assert len(specs.match_specs(["CNN_*"])) == 8
    assert len(specs.match_specs(None)) == len(specs.SPECS) >= 20
    assert [s.name for s in specs.match_specs(["DNN_3L_*", "DNN_3L_Dropout_Exp2"])] == [
        "DNN_3L_No_Dropout_Exp1", "DNN_3L_Dropout_Exp2", "DNN_3L_Dropout_Exp3"]
    with pytest.raises(UsageError, match="matches no spec"):
        specs.match_specs(["RNN_*"])


@pytest.mark.parametrize("name", SEED_NAMES)
def test_every_spec_builds_its_architecture(name):
    from toolkit.specs.models import EMBEDDING_LAYER, build_model

    spec = specs.get_spec(name)
    model = build_model(spec)
    assert model.count_params() == spec.param_count()
    assert model.inputs[0].name == "image" and tuple(model.inputs[0].shape) == (None, 28, 28, 1)
    assert model.output_names == ["probabilities"] and tuple(model.outputs[0].shape) == (None, 10)
    assert model.get_layer(EMBEDDING_LAYER).units == spec.arch.dense_units[-1]
    conv = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in conv] == list(spec.arch.conv_filters)
    # Augmentation is training-only: never a layer of the model that gets saved and exported.
    assert not any("Random" in layer.__class__.__name__ for layer in model.layers)


def test_saved_model_loads_with_plain_keras(tmp_path):
    import keras
    import numpy as np

    from toolkit.specs.models import build_model

    model = build_model(specs.get_spec("DNN_2L_Dropout_Exp5"))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(loaded(x)).sum(axis=1), 1.0, rtol=1e-5)
