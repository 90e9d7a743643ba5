"""Mixed-precision modes: resolution by capability, the records they leave, and the resume state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toolkit.core import artifacts
from toolkit.core.errors import UsageError
from toolkit.specs import get_spec, with_overrides
from toolkit.training import precision
from toolkit.training.precision import Capabilities

SAPPHIRE = Capabilities(frozenset({"avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_tile"}))
ZEN3 = Capabilities(frozenset({"avx2", "fma"}))
BF16_ONLY = Capabilities(frozenset({"avx512f", "avx512_bf16"}))
FP16_ONLY = Capabilities(frozenset({"amx_fp16"}))

# The manifest of Exp6 seed 0, 20 epochs, as the toolkit wrote it before mixed precision existed
# (from artifacts/CNN_1L_Dropout_Exp6/metrics.json of commit e0182dc): float32 runs must match it
# exactly, or every existing run would be retrained.
E0182DC_MANIFEST = {
    "spec_name": "CNN_1L_Dropout_Exp6", "recipe": 2,
    "spec": {"name": "CNN_1L_Dropout_Exp6", "family": "CNN", "dense_units": [1024], "dropout": [0.5],
             "l2": [0.0], "optimizer": "adam", "conv_filters": [64], "kernel_size": [3, 3], "conv_strides": 1,
             "pool_size": [2, 2], "pool_strides": 2, "batch_size": 512, "augment": False, "epochs": 20,
             "validation_fraction": 0.1},
    "seed": 0, "epochs": 20, "limit_train": None,
    "data": {"t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
             "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
             "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
             "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"},
    "run_id": "seed0-e20",
}


@pytest.mark.parametrize(("caps", "auto"), [
    (SAPPHIRE, "bf16"), (BF16_ONLY, "bf16"), (FP16_ONLY, "fp16"), (ZEN3, "off"),
    (Capabilities(frozenset(), "NVIDIA H100", (9, 0)), "bf16"),
    (Capabilities(frozenset(), "Tesla T4", (7, 5)), "fp16"),
    (Capabilities(frozenset({"avx512_bf16"}), "Tesla P100", (6, 0)), "off"),  # the GPU decides
])
def test_auto_resolves_to_the_fastest_type_the_machine_has(caps, auto):
    assert precision.resolve("auto", caps) == auto
    assert precision.resolve("AUTO", caps) == auto
    assert precision.resolve("off", caps) == "off"
    for mode in caps.supported():
        assert precision.resolve(mode, caps) == mode


def test_off_needs_no_detection(monkeypatch):
    monkeypatch.setattr(precision, "detect", lambda: pytest.fail("off must not probe the hardware"))
    assert precision.resolve("off") == "off"


def test_a_type_the_machine_lacks_says_what_it_supports():
    with pytest.raises(UsageError) as err:
        precision.resolve("fp16", BF16_ONLY)
    message = err.value.message
    assert "needs a CPU with amx_fp16" in message and "supports bf16, off" in message
    assert "pass --mixed-precision bf16 or auto or off" in message and "\n" not in message
    with pytest.raises(UsageError, match=r"supports off: pass --mixed-precision auto or off"):
        precision.resolve("bf16", ZEN3)
    with pytest.raises(UsageError, match=r"compute capability 8\.0 or newer"):
        precision.resolve("bf16", Capabilities(frozenset(), "Tesla T4", (7, 5)))


def test_unknown_mode_lists_the_modes_and_what_the_machine_supports():
    with pytest.raises(UsageError, match=r"unknown --mixed-precision 'fp8'; expected one of auto, bf16, "
                                         r"fp16, off\. This machine .* supports bf16, off"):
        precision.resolve("fp8", SAPPHIRE)
    # AVX512-FP16 alone is not fast fp16 training for TensorFlow (measured ~500x slower).
    assert not SAPPHIRE.supports("fp16") and FP16_ONLY.supports("fp16")


def test_cpu_flags_come_from_proc_cpuinfo(tmp_path):
    from toolkit.core import machine

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16\n\nprocessor\t: 1\n")
    assert machine.cpu_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16", "amx_bf16"}
    assert machine.cpu_flags(tmp_path / "missing") == frozenset()


def test_float32_runs_keep_todays_manifest_and_run_id():
    spec = get_spec("CNN_1L_Dropout_Exp6")
    checksums = E0182DC_MANIFEST["data"]
    off = artifacts.make_manifest(spec, seed=0, epochs=20, limit_train=None, data_checksums=checksums)
    assert off == E0182DC_MANIFEST
    # The spec's mixed-precision default is recipe data, but not part of the recorded spec.
    assert artifacts.make_manifest(with_overrides(spec, mixed_precision="bf16"), seed=0, epochs=20,
                                   limit_train=None, data_checksums=checksums) == E0182DC_MANIFEST
    bf16 = artifacts.make_manifest(spec, seed=0, epochs=20, limit_train=None, data_checksums=checksums,
                                   mixed_precision="bf16")
    assert bf16 == {**E0182DC_MANIFEST, "run_id": "seed0-e20-bf16", "mixed_precision": "bf16"}
    assert artifacts.run_id(1, 5, 3000, "fp16") == "seed1-e5-n3000-fp16"
    assert artifacts.run_id(1, 5, 3000, "off") == "seed1-e5-n3000"


def test_spec_rejects_an_unknown_mode():
    with pytest.raises(UsageError, match="mixed_precision must be one of"):
        with_overrides(get_spec("DNN_1L_No_Dropout_Exp1"), mixed_precision="fp8")


def test_policy_scope_restores_the_global_policy():
    from toolkit.core.tf import keras

    assert keras.mixed_precision.global_policy().name == "float32"
    with precision.policy_scope("bf16"):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_mixed_models_keep_float32_variables_and_output_and_copy_back_exactly():
    from toolkit.specs.models import build_model
    from toolkit.training.fitting import compile_model

    spec = get_spec("DNN_2L_Dropout_Exp2")
    for mode in ("bf16", "fp16"):
        with precision.policy_scope(mode):
            model = compile_model(build_model(spec), spec, 1)
        precision.check_float32_contract(model)
        x = np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32)
        model.train_on_batch(x, np.arange(16) % 10)
        assert model.get_layer("embedding").compute_dtype == ("bfloat16" if mode == "bf16" else "float16")
        copy = precision.float32_copy(model, lambda: compile_model(build_model(spec), spec, 1))
        assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
        assert all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), model.get_weights(), strict=True))
        opt = precision.base_optimizer(model.optimizer)
        for target, source in zip(copy.optimizer.variables, opt.variables, strict=True):
            assert np.array_equal(target.numpy(), source.numpy())


@pytest.mark.slow
def test_fused_adam_is_kerass_adam_up_to_rounding():
    """Mixed modes train with TensorFlow's fused Adam kernel; float32 keeps Keras' own update."""
    from toolkit.core.tf import keras
    from toolkit.specs.models import build_model
    from toolkit.training.fitting import compile_model
    from toolkit.training.train import build_training_model

    spec = get_spec("DNN_2L_Dropout_Exp2")
    assert type(build_training_model(spec, "off").optimizer).__name__ == "Adam"
    assert type(build_training_model(spec, "bf16").optimizer).__name__ == "FusedAdam"
    assert precision.training_optimizer("rmsprop", "bf16") == "rmsprop"
    x = np.random.default_rng(0).random((64, 28, 28, 1), dtype=np.float32)
    models = []
    for mode in ("off", "bf16"):  # the optimizer of each mode, both models computing in float32
        keras.utils.set_random_seed(0)
        models.append(compile_model(build_model(spec), spec, 1, mode=mode))
        for _ in range(5):
            models[-1].train_on_batch(x, np.arange(64) % 10)
    stock, fused = models
    for a, b in zip(stock.get_weights(), fused.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    for a, b in zip(stock.optimizer.variables, fused.optimizer.variables, strict=True):
        assert a.path.rsplit("/", 1)[-1] == b.path.rsplit("/", 1)[-1]
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- resume state


def _tiny_model():
    from toolkit.specs.models import build_model
    from toolkit.training.fitting import compile_model

    spec = get_spec("DNN_2L_Dropout_Exp2")
    model = compile_model(build_model(spec), spec, 1)
    x = np.random.default_rng(0).random((32, 28, 28, 1), dtype=np.float32)
    model.train_on_batch(x, np.arange(32) % 10)
    return model


@pytest.mark.slow
def test_a_half_written_checkpoint_is_never_used(tmp_path):
    from toolkit.training.checkpoint import CheckpointWriter, Snapshot, load_resume

    model = _tiny_model()
    manifest = {"run_id": "seed0-e3"}
    writer = CheckpointWriter(tmp_path, manifest)
    writer.submit(Snapshot.take(model), epochs_done=1, history={"loss": [1.0]}, seconds=2.0)
    writer.wait()
    assert writer.committed == 1
    # What a kill in the middle of epoch 2's write leaves: its temporary file, half written, and even
    # (without an fsync, after a power cut) a truncated file under the final name.
    good = (tmp_path / "checkpoint-e0001.npz").read_bytes()
    (tmp_path / ".checkpoint-e0002.npz.abc.tmp.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "checkpoint-e0002.npz").write_bytes(good[: len(good) // 3])
    state = load_resume(tmp_path, manifest)
    assert state is not None and state.epochs_done == 1 and state.history == {"loss": [1.0]}
    fresh = _tiny_model()
    state.snapshot.restore(fresh)
    pairs = zip(fresh.variables, model.variables, strict=True)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in pairs)
    assert load_resume(tmp_path, {"run_id": "another"}) is None
    # progress.json naming a damaged file: start over, never load garbage.
    progress = json.loads((tmp_path / "progress.json").read_text())
    (tmp_path / "progress.json").write_text(json.dumps({**progress, "checkpoint": "checkpoint-e0002.npz"}))
    assert load_resume(tmp_path, manifest) is None


def test_a_failed_background_write_surfaces_on_the_training_thread(tmp_path):
    from toolkit.training.checkpoint import CheckpointWriter, Snapshot

    blocker = tmp_path / "partial"
    blocker.write_text("a file where the folder should be")
    writer = CheckpointWriter(blocker, {})
    snapshot = Snapshot([np.zeros(3, np.float32)], ["dense/kernel"], [], [])
    writer.submit(snapshot, epochs_done=1, history={}, seconds=0.0)
    with pytest.raises(OSError):
        writer.wait()
