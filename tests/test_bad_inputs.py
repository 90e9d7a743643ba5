"""The numbered bad inputs of issue 9: each ends in one line and its documented exit code.

1 an artifacts root the user cannot write     5 recommend -k larger than the catalog
2 --artifacts naming a regular file           6 predict with some unreadable images
3 predict with a model off the contract       7 parity of a file replaced since (test_parity.py)
4 --limit-train above the training images     8 usage errors of the option parser
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from toolkit.cli.app import app

runner = CliRunner()
NOBODY = 65534
TOOLKIT_BIN = Path(sys.executable).with_name("toolkit")


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def onnx_classifier(path: Path, *, input_name: str = "image", input_shape=("N", 28, 28, 1),
                    classes: int = 10) -> Path:
    """A real ONNX model: flatten the input, one MatMul, softmax (random weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Reshape", [input_name, "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(rng.normal(size=(784, classes)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array([-1, 784], dtype=np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def png(dataset, tmp_path) -> Path:
    path = tmp_path / "boot.png"
    Image.fromarray(dataset.x_test[0], "L").save(path)
    return path


# ---------------------------------------------------------------- 1. a root nobody can write


def _as_unprivileged(args: list[str], home: Path) -> subprocess.CompletedProcess:
    """`args` as an unprivileged user: this one if it is not root (root ignores modes), else
    uid/gid 65534 through setpriv."""
    env = {**os.environ, "HOME": str(home), "TOOLKIT_ARTIFACTS": ""}
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is not installed: cannot drop to an unprivileged user")
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        probe = subprocess.run([*prefix, sys.executable, "-c", "import toolkit.cli.app"], capture_output=True,
                               text=True, env=env, cwd=home)
        if probe.returncode != 0:
            pytest.skip(f"uid {NOBODY} cannot run this checkout's Python (the venv or the source must be "
                        f"readable by it): {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    return subprocess.run([*prefix, *args], capture_output=True, text=True, env=env, cwd=home, timeout=300)


@pytest.fixture
def read_only_root():
    """ROOT/artifacts (mode 555) under a 755 temp folder the unprivileged user can reach."""
    top = Path(tempfile.mkdtemp(prefix="toolkit-readonly-"))
    os.chmod(top, 0o755)
    root = top / "artifacts"
    (root / "CNN_1L_Dropout_Exp6").mkdir(parents=True)
    os.chmod(root / "CNN_1L_Dropout_Exp6", 0o555)
    os.chmod(root, 0o555)
    try:
        yield root
    finally:
        for folder in (root, root / "CNN_1L_Dropout_Exp6"):
            os.chmod(folder, stat.S_IRWXU)
        shutil.rmtree(top)


@pytest.mark.parametrize("command", [
    ["report"],
    ["train", "--exp", "DNN_1L_No_Dropout_Exp1", "--epochs", "1", "--limit-train", "100"],
])
def test_1_read_only_artifacts_root(read_only_root, command):
    result = _as_unprivileged([str(TOOLKIT_BIN), *command, "--artifacts", str(read_only_root)],
                              home=read_only_root.parent)
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"error: {read_only_root}") and "cannot write there" in line, line
    assert "chmod u+w" in line and "--artifacts DIR" in line and "Traceback" not in result.stderr
    assert sorted(p.name for p in read_only_root.iterdir()) == ["CNN_1L_Dropout_Exp6"]  # nothing written


# ---------------------------------------------------------------- 2. a file as the root


@pytest.mark.parametrize("command", [["train", "--exp", "DNN_1L_No_Dropout_Exp1", "--epochs", "1"],
                                     ["report"], ["export"], ["bench"]])
def test_2_artifacts_root_is_a_file(tmp_path, command):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    result = runner.invoke(app, [*command, "--artifacts", str(target)])
    assert result.exit_code == 4, result.output
    line = one_line(result.output)
    assert f"{target} is a file; expected a folder for the artifacts root (from --artifacts)" in line
    assert target.read_text() == "not a folder"


def test_2_artifacts_env_var_is_a_file(tmp_path, monkeypatch):
    target = tmp_path / "results.txt"
    target.write_text("x")
    monkeypatch.setenv("TOOLKIT_ARTIFACTS", str(target))
    result = runner.invoke(app, ["report"])
    assert result.exit_code == 4 and "(from TOOLKIT_ARTIFACTS)" in one_line(result.output)


# ---------------------------------------------------------------- 3. a model off the contract


@pytest.mark.parametrize("kwargs, has", [
    ({"input_name": "Input3", "input_shape": ("N", 1, 28, 28)}, "input 'Input3' float32 [N,1,28,28]"),
    ({"input_shape": ("N", 784)}, "input 'image' float32 [N,784]"),
    ({"input_shape": (1, 28, 28, 1)}, "input 'image' float32 [1,28,28,1]"),
    ({"classes": 9}, "output 'probabilities' float32 [N,9]"),
])
def test_3_predict_with_a_model_off_the_contract(tmp_path, png, kwargs, has):
    model = onnx_classifier(tmp_path / "other.onnx", **kwargs)
    result = runner.invoke(app, ["predict", str(model), str(png)])
    assert result.exit_code == 4, result.output
    line = one_line(result.output)
    assert f"{model}: does not match the model contract" in line and has in line
    expected = "'probabilities' float32 [N,10]" if "classes" in kwargs else "'image' float32 [N,28,28,1]"
    assert f"{has}, expected {expected}" in line


def test_3_every_mismatch_is_listed_at_once(tmp_path, png):
    model = onnx_classifier(tmp_path / "other.onnx", input_name="x", input_shape=("N", 784), classes=3)
    line = one_line(runner.invoke(app, ["predict", str(model), str(png)]).output)
    assert "input 'x' float32 [N,784]" in line and "output 'probabilities' float32 [N,3]" in line


# ---------------------------------------------------------------- 4. --limit-train too large


def test_4_limit_train_above_the_training_images(tmp_path):
    result = runner.invoke(app, ["train", "--exp", "CNN_1L_Dropout_Exp6", "--limit-train", "70000",
                                 "--artifacts", str(tmp_path)])
    assert result.exit_code == 2, result.output
    line = one_line(result.output)
    assert "--limit-train 70,000 is more than the 54,000 training images left after the 6,000-image " \
           "validation holdout; use at most 54000" in line
    assert list(tmp_path.iterdir()) == []  # no run id "n70000", no lock, nothing


def test_4_limit_train_bounds():
    from toolkit.core.errors import UsageError
    from toolkit.training.inputs import check_limit_train, split_indices

    check_limit_train(54_000, fraction=0.1)
    train_idx, val_idx = split_indices(60_000, seed=0, fraction=0.1, limit_train=54_000)
    assert len(train_idx) == 54_000 and len(val_idx) == 6_000
    for bad in (54_001, 9):
        with pytest.raises(UsageError):
            check_limit_train(bad, fraction=0.1)
    result = runner.invoke(app, ["sweep", "--exp", "DNN_*", "--limit-train", "60000"])
    assert result.exit_code == 2 and "54,000" in one_line(result.output)


# ---------------------------------------------------------------- 5. recommend -k too large


def test_5_recommend_k_larger_than_the_catalog_fails_before_any_work(tmp_path):
    result = runner.invoke(app, ["recommend", "--exp", "CNN_1L_Dropout_Exp6", "--index", "0", "-k", "60001",
                                 "--artifacts", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "-k 60001 is more than the 60,000 catalog images; use 1..60000" in one_line(result.output)
    result = runner.invoke(app, ["recommend", "--index", "0", "-k", "501", "--catalog-limit", "500",
                                 "--artifacts", str(tmp_path)])
    assert result.exit_code == 2 and "more than the 500 catalog images" in one_line(result.output)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 6. some images unreadable


def test_6_predict_prints_what_it_could_and_exits_7(tmp_path, png):
    model = onnx_classifier(tmp_path / "model.onnx")
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    args = ["predict", str(model), str(broken), str(png), str(folder)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 7, result.output
    rows = json.loads(result.stdout)
    assert [r["image"] for r in rows] == [str(png)] and rows[0]["class"]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors[0].startswith(f"failed: {broken}: not a readable image")
    assert errors[1] == (f"failed: {folder}: is a folder, not a file; expected an image file (PNG, JPEG, "
                         "WebP, GIF, BMP or TIFF)")
    assert errors[2] == "error: 2 of 3 images could not be read (listed above); the other 1 was classified"
    table = runner.invoke(app, args)
    assert table.exit_code == 7 and png.name in table.stdout and "Predictions of" in table.stdout
    only_bad = runner.invoke(app, ["predict", str(model), str(folder)])
    assert only_bad.exit_code == 3 and "is a folder, not a file" in one_line(only_bad.output)


# ---------------------------------------------------------------- 8. usage errors of the parser


@pytest.mark.parametrize("args, has", [
    (["train", "--epochs", "0"], "Invalid value for '--epochs'"),
    (["bench", "--bogus"], "No such option: --bogus"),
    (["predict"], "Missing argument"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["recommend", "-k", "0"], "Invalid value for '-k'"),
])
def test_8_usage_errors_are_one_line(args, has):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    line = one_line(result.output)
    assert line.startswith("error: ") and has in line and "--help'" in line


def test_8_through_the_installed_entry_point():
    result = subprocess.run([str(TOOLKIT_BIN), "bench", "--seconds", "zero"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert one_line(result.stderr).startswith("error: Invalid value for '--seconds'")
    assert result.stdout == ""
