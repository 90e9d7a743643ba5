"""Model families: every family's counts (from the spec alone) against the built Keras model, the
seed's counts unchanged, the model contract, and impossible architectures refused by field."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from toolkit import specs
from toolkit.core.errors import UsageError
from toolkit.families import FAMILIES, get_family
from toolkit.families.bnconv import BNConvArch
from toolkit.families.mobilenet import MobileNetArch
from toolkit.families.resnet import ResNetArch
from toolkit.families.seedarch import SeedArch

# Architectures each built-in family is checked on (strided, patchify, hidden heads, projections).
SAMPLES = {
    "DNN": [SeedArch(dense_units=(64, 32), dropout=(0.0, 0.2), l2=(0.0, 1e-3))],
    "CNN": [SeedArch(conv_filters=(8, 16), dense_units=(32,), dropout=(0.5,), l2=(0.0,))],
    "BNConv": [
        BNConvArch(stages=((8,), (16,), (32,))),
        BNConvArch(stem_filters=8, stem_kernel=4, stem_stride=4, stages=((16, 32),), hidden_units=24,
                   dropout=0.2),
        BNConvArch(stem_filters=8, stem_stride=2, stages=((8,), (16, 16), (24,)), downsample="stride"),
        BNConvArch(stem_filters=8, stem_stride=2, stages=((), (16,)), pooling="flatten", hidden_units=16,
                   dropout=0.3),
        BNConvArch(stem_filters=8, stem_stride=2, stages=((16,), ()), pooling="flatten", hidden_units=16),
    ],
    "ResNet": [ResNetArch(widths=(8, 16), blocks=(1, 2), stem_filters=8),
               ResNetArch(widths=(16, 24), blocks=(2, 1), stem_filters=8, stem_stride=2, first_stride=2,
                          dropout=0.1)],
    "MobileNet": [MobileNetArch(blocks=((16, 1), (24, 2), (32, 2)), stem_filters=8),
                  MobileNetArch(blocks=((16, 2),), stem_filters=8, stem_stride=2)],
}

# The seed's (parameters, MFLOPs per image), as the toolkit counted them before families existed.
SEED_COUNTS = {
    "DNN_1L_No_Dropout_Exp1": (50890, 0.101632),
    "DNN_2L_No_Dropout_Exp1": (59850, 0.119296),
    "DNN_2L_Dropout_Exp2": (136074, 0.27136),
    "DNN_2L_No_Dropout_Exp3": (59850, 0.119296),
    "DNN_2L_Dropout_Exp4": (136074, 0.27136),
    "DNN_2L_Dropout_Exp5": (136074, 0.27136),
    "DNN_3L_No_Dropout_Exp1": (67466, 0.1344),
    "DNN_3L_Dropout_Exp2": (94154, 0.187392),
    "DNN_3L_Dropout_Exp3": (94154, 0.187392),
    "CNN_2L_No_Dropout_Exp1": (1668490, 8.1472),
    "CNN_2L_Dropout_Exp2": (1668490, 8.1472),
    "CNN_2L_No_Dropout_Exp3": (1724490, 8.259072),
    "CNN_3L_No_Dropout_Exp4": (235018, 6.459648),
    "CNN_3L_Dropout_Exp5": (235018, 6.459648),
    "CNN_1L_Dropout_Exp6": (11087498, 22.9504),
    "CNN_1L_Dropout_DA_Exp7": (1386506, 3.550208),
    "CNN_2L_Dropout_DA_Exp8": (1668490, 8.1472),
}


def keras_macs(model) -> int:
    """Multiply-adds of conv, depthwise and dense layers, read from the built Keras layers."""
    from toolkit.core.tf import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, cin, mult = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += h * w * kh * kw * cin * mult
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            total += h * w * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def _cases():
    for name, archs in SAMPLES.items():
        for i, arch in enumerate(archs):
            yield pytest.param(name, arch, id=f"{name}-{i}")
    for spec in specs.SPECS.values():
        if not spec.study:
            yield pytest.param(spec.family, spec.arch, id=spec.name)


def test_every_built_in_family_has_samples():
    assert {"DNN", "CNN", "BNConv", "ResNet", "MobileNet"} <= set(FAMILIES)
    assert set(SAMPLES) <= set(FAMILIES)


@pytest.mark.parametrize("family_name,arch", list(_cases()))
def test_counts_from_the_spec_match_the_built_model(family_name, arch):
    from toolkit.core.tf import keras

    family = get_family(family_name)
    assert family.problems(arch) == []
    counts = family.counts(arch)
    model = family.build(arch, "probe")
    assert counts.params == model.count_params()
    assert counts.macs == keras_macs(model) and counts.mflops == pytest.approx(2 * keras_macs(model) / 1e6)
    # The contract: one float32 input `image`, softmax `probabilities`, a layer named `embedding`.
    assert [t.name for t in model.inputs] == ["image"] and tuple(model.inputs[0].shape) == (None, 28, 28, 1)
    assert model.output_names == ["probabilities"]
    assert tuple(model.outputs[0].shape) == (None, 10)
    assert model.get_layer("embedding").output.shape[-1] == counts.embedding_size
    # The analyses' feature maps are layers of the model, each a map with channels.
    for name in family.feature_maps(arch):
        assert len(model.get_layer(name).output.shape) == 4, name
    # Stock layers only: the model round-trips through plain keras.saving without custom objects.
    assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)
    # Both interpreters saw the same named layers.
    skip = (keras.layers.InputLayer, keras.layers.Dropout)
    assert {n for n, _, _ in counts.layers} == {la.name for la in model.layers if not isinstance(la, skip)}


def test_the_seed_counts_stay_as_they_were():
    for name, (params, mflops) in SEED_COUNTS.items():
        spec = specs.get_spec(name)
        assert (spec.param_count(), spec.mflops_per_image()) == (params, pytest.approx(mflops, abs=1e-12))


def test_seed_manifest_summary_is_unchanged():
    """What a seed run's manifest recorded before recipes existed: completed runs are reused."""
    assert specs.get_spec("CNN_1L_Dropout_Exp6").summary() == {
        "name": "CNN_1L_Dropout_Exp6", "family": "CNN", "dense_units": (1024,), "dropout": (0.5,),
        "l2": (0.0,), "optimizer": "adam", "conv_filters": (64,), "kernel_size": (3, 3), "conv_strides": 1,
        "pool_size": (2, 2), "pool_strides": 2, "batch_size": 512, "augment": False, "epochs": 20,
        "validation_fraction": 0.1}
    summary = specs.get_spec("frontier").summary()
    assert summary["family"] == "BNConv" and summary["schedule"] == "cosine" and "teacher" not in summary
    assert specs.get_spec("embedded").summary()["teacher"] == "frontier"


@pytest.mark.parametrize("family,arch,needles", [
    ("ResNet", ResNetArch(widths=(8,) * 7, blocks=(1,) * 7), ("widths", "allowed: at most 5")),
    ("ResNet", ResNetArch(widths=(8, 16), blocks=(1,)), ("blocks must give",)),
    ("ResNet", ResNetArch(first_stride=3), ("first_stride must be one of 1, 2",)),
    ("BNConv", BNConvArch(stages=((8,),) * 5, stem_filters=8, stem_kernel=4, stem_stride=4),
     ("stages", "7x7", "allowed: at most 3", "7 -> 4 -> 2 -> 1")),
    ("BNConv", BNConvArch(stages=((8,),), stem_filters=8, stem_stride=3),
     ("stem_stride must be one of 1, 2, 4",)),
    ("BNConv", BNConvArch(stages=(), dropout=1.5),
     ("stages must be a non-empty", "dropout must be in [0, 1)")),
    ("BNConv", BNConvArch(stages=((8,),), downsample="avgpool", pooling="max"),
     ("downsample must be one of maxpool, stride", "pooling must be one of gap, flatten")),
    ("BNConv", BNConvArch(stages=((), (8,))), ("empty: the first after a stem",)),
    ("BNConv", BNConvArch(stages=((8,), ()), downsample="stride"), ("a later one that only max-pools",)),
    ("MobileNet", MobileNetArch(blocks=((8, 2),) * 6), ("blocks", "stride-2 blocks", "allowed: at most 5")),
    ("MobileNet", MobileNetArch(blocks=((8, 3),)), ("each stride must be one of 1, 2",)),
    ("CNN", SeedArch(conv_filters=(8,) * 4, dense_units=(8,), dropout=(0.0,), l2=(0.0,)),
     ("conv_filters", "allowed: at most 3")),
    ("DNN", SeedArch(conv_filters=(8,), dense_units=(8,), dropout=(0.0,), l2=(0.0,)),
     ("a DNN spec has none",)),
    ("CNN", BNConvArch(stages=((8,),)), ("takes a SeedArch architecture",)),
])
def test_impossible_architectures_name_the_field_and_what_is_allowed(family, arch, needles):
    with pytest.raises(UsageError) as info:
        specs.Spec(name="bad", family=family, arch=arch)
    message = info.value.message
    assert message.startswith("spec 'bad' is invalid:") and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_unknown_family_lists_the_known_ones():
    expected = r"unknown model family 'ResNat' \(closest: ResNet\); allowed: DNN, CNN"
    with pytest.raises(UsageError, match=expected):
        specs.Spec(name="bad", family="ResNat", arch=ResNetArch())
    assert get_family("resnet").name == "ResNet"  # names are matched case-insensitively


def test_list_json_counts_every_spec_without_tensorflow():
    code = ("import json, sys; from typer.testing import CliRunner; from toolkit.cli.app import app; "
            "r = CliRunner().invoke(app, ['list', '--json']); assert r.exit_code == 0, r.output; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    import json

    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == set(specs.SPECS)
    for name, row in rows.items():
        spec = specs.get_spec(name)
        assert row["family"] == spec.family and row["origin"] == ("study" if spec.study else "new")
        assert row["params"] == spec.param_count()
        assert row["mflops_per_image"] == pytest.approx(spec.mflops_per_image(), abs=1e-4)
    assert rows["CNN_1L_Dropout_Exp6"]["params"] == 11_087_498 and rows["embedded"]["origin"] == "new"


def test_list_groups_by_family_and_marks_study_or_new():
    from typer.testing import CliRunner

    from toolkit.cli.app import app

    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    text = result.output
    # Groups in registry order: every DNN row before every CNN row before the BNConv rows.
    positions = {name: text.index(name + " ") for name in specs.SPECS}
    last_dnn = max(positions[s.name] for s in specs.SPECS.values() if s.family == "DNN")
    first_cnn = min(positions[s.name] for s in specs.SPECS.values() if s.family == "CNN")
    assert last_dnn < first_cnn < positions["embedded"]
    assert "study" in text and "new" in text
    only = CliRunner().invoke(app, ["list", "--family", "bnconv"])
    assert only.exit_code == 0 and "embedded" in only.output and "CNN_1L_Dropout_Exp6" not in only.output
