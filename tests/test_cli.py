"""CLI boundary: exit codes and one-line messages, with CliRunner."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from toolkit import specs
from toolkit.cli.app import app
from toolkit.core import artifacts

runner = CliRunner()


def test_list_shows_all_specs():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for name in specs.SPECS:
        assert name in result.output


def test_list_rejects_bad_family():
    result = runner.invoke(app, ["list", "--family", "RNN"])
    assert result.exit_code == 2 and "unknown model family 'RNN'" in result.output
    assert "allowed: DNN, CNN, BNConv, ResNet, MobileNet" in result.output


def test_data_reports_source_and_counts():
    result = runner.invoke(app, ["data"])
    assert result.exit_code == 0, result.output
    assert "all four files verified" in result.output and "60000" in result.output
    assert "Ankle boot" in result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["train", "--exp", "CNN_1L_Dropout_Exp66"], 2, "closest: CNN_1L_Dropout_Exp6"),
        (["train", "--exp", "DNN_1L_No_Dropout_Exp1", "--data-dir", "/nonexistent"], 3,
         "is not a directory"),
        (["train", "--exp", "DNN_1L_No_Dropout_Exp1", "--epochs", "0"], 2, "--epochs"),
        (["train", "--exp", "DNN_1L_No_Dropout_Exp1", "--limit-train", "3"], 2, "limit-train"),
    ],
)
def test_bad_input_exit_codes(args, code, message):
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_corrupted_data_exit_3(tmp_path):
    bad = tmp_path / "fm"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (bad / f"{name}.gz").write_bytes(b"\x1f\x8b broken")
    result = runner.invoke(app, ["data", "--data-dir", str(bad)])
    assert result.exit_code == 3 and "cannot be read" in result.output


@pytest.mark.slow
def test_train_small_and_busy(tmp_path):
    args = ["train", "--exp", "DNN_1L_No_Dropout_Exp1", "--epochs", "1", "--limit-train", "500",
            "--artifacts", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test_accuracy" in result.output and "0.8385" in result.output  # the seed's figure
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "Reused the completed run" in again.output
    arts = artifacts.spec_artifacts("DNN_1L_No_Dropout_Exp1", tmp_path)
    with artifacts.exclusive_lock(arts.lock_file("seed0-e1-n500"), what="test"):
        busy = runner.invoke(app, [*args, "--force"])
    assert busy.exit_code == 8 and "is busy" in busy.output


def test_env_var_moves_artifacts_root(tmp_path, monkeypatch):
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "elsewhere"))
    assert artifacts.resolve_root() == (tmp_path / "elsewhere").resolve()
    assert artifacts.resolve_root(tmp_path / "flag") == (tmp_path / "flag").resolve()


def test_importing_toolkit_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, toolkit, toolkit.cli.app, toolkit.core.data, toolkit.specs, toolkit.core.artifacts, "
            "toolkit.runtimes; assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
