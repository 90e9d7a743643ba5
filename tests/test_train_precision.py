"""Issue 10 end to end: bad --mixed-precision inputs, a bf16 run's saved model and exports, and a
kill -9 in the middle of training followed by --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.cli.app import app
from toolkit.core import artifacts
from toolkit.training import precision, train
from toolkit.training.precision import Capabilities

runner = CliRunner()
TOOLKIT_BIN = Path(sys.executable).with_name("toolkit")
NO_FAST_TYPES = Capabilities(frozenset({"avx2", "fma"}))


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------- bad inputs: one line, exit 2


@pytest.mark.parametrize("command", ["train", "run", "sweep"])
def test_a_type_the_cpu_lacks_is_one_line_exit_2(command, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "detect", lambda: NO_FAST_TYPES)
    result = runner.invoke(app, [command, "--exp", "DNN_1L_No_Dropout_Exp1", "--epochs", "1",
                                 "--mixed-precision", "fp16", "--artifacts", str(tmp_path)])
    assert result.exit_code == 2, result.output
    line = one_line(result.output)
    assert "--mixed-precision fp16 needs a CPU with amx_fp16" in line
    assert "supports off: pass --mixed-precision auto or off" in line
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_mode_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "detect", lambda: NO_FAST_TYPES)
    result = runner.invoke(app, ["train", "--exp", "DNN_1L_No_Dropout_Exp1", "--mixed-precision", "fp8",
                                 "--artifacts", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "unknown --mixed-precision 'fp8'; expected one of auto, bf16, fp16, off" in one_line(result.output)


def test_resume_in_another_precision_names_the_command_that_continues(tmp_path):
    arts = artifacts.spec_artifacts("DNN_1L_No_Dropout_Exp1", tmp_path)
    partial = arts.partial_dir("seed0-e3-n1000-bf16")
    partial.mkdir(parents=True)
    (partial / "progress.json").write_text("{}")
    result = runner.invoke(app, ["train", "--exp", "DNN_1L_No_Dropout_Exp1", "--epochs", "3",
                                 "--limit-train", "1000", "--mixed-precision", "off", "--resume",
                                 "--artifacts", str(tmp_path)])
    assert result.exit_code == 2, result.output
    line = one_line(result.output)
    assert ("the interrupted run DNN_1L_No_Dropout_Exp1/seed0-e3-n1000-bf16 trained with "
            "--mixed-precision bf16") in line
    assert ("toolkit train --exp DNN_1L_No_Dropout_Exp1 --seed 0 --epochs 3 --limit-train 1000 "
            "--mixed-precision bf16 --resume") in line
    assert not arts.run_dir("seed0-e3-n1000").exists()


# ---------------------------------------------------------------- a bf16 run


def _bf16_here(monkeypatch) -> None:
    """bf16 training where the CPU has it; elsewhere TensorFlow emulates it (slowly, but exactly
    as far as these checks go), so the capability is claimed for the test."""
    if not precision.detect().supports("bf16"):
        monkeypatch.setattr(precision, "detect", lambda: Capabilities(frozenset({"avx512_bf16"})))


LOAD_IN_FRESH_PROCESS = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras
    model = keras.saving.load_model(sys.argv[1])
    print(json.dumps({"policies": sorted({layer.dtype_policy.name for layer in model.layers}),
                      "global": keras.mixed_precision.global_policy().name,
                      "variables": sorted({v.dtype for v in model.weights}),
                      "optimizer": type(model.optimizer).__name__,
                      "iterations": int(model.optimizer.iterations.numpy())}))
""")


@pytest.mark.slow
def test_a_bf16_run_saves_the_float32_contract_and_its_exports_pass_parity(tmp_path, monkeypatch):
    from test_benchmark import export_for_tests

    from toolkit.export.parity_record import read_parity

    _bf16_here(monkeypatch)
    name = "CNN_1L_Dropout_Exp6"
    result = train.train(train.TrainRequest(name, epochs=1, limit_train=1000, root=tmp_path,
                                            mixed_precision="bf16"))
    metrics = result.metrics
    assert result.run_dir.name == "seed0-e1-n1000-bf16" and metrics["mixed_precision"] == "bf16"
    assert metrics["manifest"]["mixed_precision"] == "bf16" and metrics["images_per_second"] > 0
    assert metrics["test_accuracy"] > 0.5
    model_file = str(result.run_dir / "model.keras")
    loaded = subprocess.run([sys.executable, "-c", LOAD_IN_FRESH_PROCESS, model_file],
                            capture_output=True, text=True, check=True)
    facts = json.loads(loaded.stdout.strip().splitlines()[-1])
    # No mixed policy travels with the file: every layer is float32, and the optimizer state came along.
    assert facts == {"policies": ["float32"], "global": "float32", "variables": ["float32"],
                     "optimizer": "Adam", "iterations": 2}
    # int8 is left out: a 1-epoch model on 1,000 images has so many near-ties that int8's 1% flip
    # tolerance is a coin toss (measured 98.7% agreement); full bf16 runs export int8 with parity.
    keys = ("onnx-fp32", "tflite-fp32", "onnx-fp16")
    export_for_tests(tmp_path, name, keys)  # asserts that each exported and passed parity
    record = read_parity(artifacts.spec_artifacts(name, tmp_path))
    # Each file's primary row (its other runtimes' rows, OpenVINO's, are judged in test_openvino).
    assert sorted(r.key for r in record.results if r.passed and r.name == r.key) == sorted(keys)
    # The float32 run of the same spec and seed is another run; both stay, both are reusable.
    fp32 = train.train(train.TrainRequest(name, epochs=1, limit_train=1000, root=tmp_path,
                                          mixed_precision="off"), promote=False)
    assert fp32.run_dir.name == "seed0-e1-n1000" and "mixed_precision" not in fp32.metrics["manifest"]
    again = train.train(train.TrainRequest(name, epochs=1, limit_train=1000, root=tmp_path,
                                           mixed_precision="bf16"))
    assert again.reused and again.run_dir == result.run_dir


# ---------------------------------------------------------------- kill -9, then --resume


@pytest.mark.slow
def test_kill_9_during_training_then_resume_continues_exactly(tmp_path):
    name, epochs, limit = "DNN_2L_Dropout_Exp2", 6, 12000
    args = ["--exp", name, "--epochs", str(epochs), "--limit-train", str(limit), "--mixed-precision", "off"]
    root = tmp_path / "killed"
    partial = artifacts.spec_artifacts(name, root).partial_dir(f"seed0-e{epochs}-n{limit}")
    proc = subprocess.Popen([str(TOOLKIT_BIN), "train", *args, "--artifacts", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = _wait_for_epochs(partial / "progress.json", 2, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and done < epochs
    committed = json.loads((partial / "progress.json").read_text())["epochs_done"]
    assert committed >= 2 and len(list(partial.glob("checkpoint-e*.npz"))) >= 1
    seen: list[int] = []
    resumed = train.train(train.TrainRequest(name, epochs=epochs, limit_train=limit, root=root,
                                             resume=True, mixed_precision="off"), on_epoch=lambda e, t,
                                             logs: seen.append(e))
    assert seen == list(range(committed + 1, epochs + 1))
    assert resumed.metrics["resumed_from_epoch"] == committed and not partial.exists()
    reference = train.train(train.TrainRequest(name, epochs=epochs, limit_train=limit,
                                               root=tmp_path / "straight", mixed_precision="off"))
    # Weights, optimizer state, dropout seeds and data order were restored: the same model.
    assert resumed.metrics["test_accuracy"] == reference.metrics["test_accuracy"]
    assert resumed.metrics["test_loss"] == reference.metrics["test_loss"]
    history = json.loads((resumed.run_dir / "history.json").read_text())
    assert history == json.loads((reference.run_dir / "history.json").read_text())
    assert len(history["loss"]) == epochs


def _wait_for_epochs(progress: Path, epochs: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended (exit {proc.returncode}) before it could be killed")
        try:
            done = json.loads(progress.read_text())["epochs_done"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= epochs:
            return done
        time.sleep(0.05)
    pytest.fail(f"no {epochs} epochs committed to {progress} within {timeout} s")


def test_resume_state_round_trips_bit_for_bit(tmp_path):
    """A checkpoint holds the variables as they were (npz, no re-encoding), with their paths."""
    from toolkit.training.checkpoint import Snapshot

    rng = np.random.default_rng(1)
    snap = Snapshot([rng.standard_normal((3, 7)).astype(np.float32), np.array([7, 0], np.uint32)],
                    ["dense/kernel", "dropout/seed_generator_state"],
                    [np.array(3, np.int64)], ["adam/iteration"])
    snap.save(tmp_path / "checkpoint-e0001.npz")
    back = Snapshot.load(tmp_path / "checkpoint-e0001.npz")
    assert back.model_paths == snap.model_paths and back.optimizer_paths == snap.optimizer_paths
    for a, b in zip([*snap.model, *snap.optimizer], [*back.model, *back.optimizer], strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-e0001.npz"]  # no temporary left
