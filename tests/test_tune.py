"""User spec files and `toolkit tune`: validation errors, budgets judged before training, storage
errors, and a search resumed after an interruption (one-epoch trials on 300 real images)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli.app import app
from toolkit.experiments import tune_job, tune_study

runner = CliRunner()

USER_SPEC = """\
[[spec]]
name = "my-tiny"
family = "BNConv"
[spec.architecture]
stem_filters = 8
stem_stride = 2
stages = [[16]]
[spec.recipe]
optimizer = "adamw"
learning_rate = 0.003
epochs = 1
"""

# Two architectures, one learning-rate range: trials differ, train in seconds.
TINY_SPACE = """\
family = "BNConv"
[architecture]
stem_filters = [4, 8]
stem_stride = 2
stages = {value = [[8]]}
[recipe]
optimizer = "adamw"
learning_rate = {low = 0.002, high = 0.01, log = true}
batch_size = 64
"""
TUNE_ARGS = ["--cost", "params", "--rungs", "1", "--limit-train", "300", "--study", "t"]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_spec_is_listed_with_its_origin(tmp_path):
    specs = _write(tmp_path, "specs.toml", USER_SPEC)
    result = runner.invoke(app, ["--specs", str(specs), "list", "--json", "--artifacts", str(tmp_path)])
    assert result.exit_code == 0, result.output
    mine = [s for s in json.loads(result.output) if s["name"] == "my-tiny"]
    assert mine and mine[0]["origin"] == "user" and mine[0]["source"] == str(specs.resolve())


def test_default_spec_file_under_the_artifacts_root_is_found(tmp_path):
    _write(tmp_path, "specs.toml", USER_SPEC)
    result = runner.invoke(app, ["list", "--json", "--artifacts", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "my-tiny" in {s["name"] for s in json.loads(result.output)}


@pytest.mark.parametrize(("change", "named"), [
    (("stem_filters = 8", "stem_filterz = 8"), "stem_filterz"),
    (('optimizer = "adamw"', 'optimizer = "adamx"'), "optimizer must be one of"),
    (('name = "my-tiny"', 'name = "embedded"'), "shadows the registered spec"),
    (("[spec.recipe]", "colour = 1\n[spec.recipe]"), "colour"),
    (("stages = [[16]]", "stages = [[16]"), "not valid TOML"),
])
def test_bad_user_spec_is_one_line_exit_2(tmp_path, change, named):
    specs = _write(tmp_path, "specs.toml", USER_SPEC.replace(*change))
    result = runner.invoke(app, ["--specs", str(specs), "list", "--artifacts", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert named in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_spec_file_is_exit_2(tmp_path):
    result = runner.invoke(app, ["--specs", str(tmp_path / "nope.toml"), "list"])
    assert result.exit_code == 2 and "does not exist" in result.output


def _no_training(monkeypatch):
    def refuse(job, **kwargs):
        raise AssertionError("trained before the input was judged")

    monkeypatch.setattr(tune_job, "run_job", refuse)


def test_impossible_budget_exits_2_before_training(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    space = _write(tmp_path, "space.toml", TINY_SPACE)
    result = runner.invoke(app, ["tune", "--space", str(space), "--max-params", "10", *TUNE_ARGS,
                                 "--artifacts", str(tmp_path / "a")])
    assert result.exit_code == 2, result.output
    assert "nothing in" in result.output and "params" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "a" / "tune").exists()  # no storage, no spec file
    assert not (tmp_path / "a" / "specs.toml").exists()


@pytest.mark.parametrize(("text", "named"), [
    ("", "empty"),
    ('family = "BNConv"\n[architecture]\nstem_filterz = [4, 8]\n', "stem_filterz"),
    ('family = "BNConv"\n[architecture]\nstem_filters = 8\n', "nothing to search"),
    ('family = "BNConv"\n[recipe]\nepochs = [1, 2]\n', "epochs"),
    ('family = "BNConv"\n[architecture]\nstem_filters = {low = 9, high = 4}\n', "low <= high"),
])
def test_malformed_space_exits_2(tmp_path, monkeypatch, text, named):
    _no_training(monkeypatch)
    space = _write(tmp_path, "space.toml", text)
    result = runner.invoke(app, ["tune", "--space", str(space), *TUNE_ARGS, "--artifacts", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert named in result.output


def test_storage_that_cannot_be_opened_exits_4(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    space = _write(tmp_path, "space.toml", TINY_SPACE)
    result = runner.invoke(app, ["tune", "--space", str(space), *TUNE_ARGS, "--storage", "not a url",
                                 "--artifacts", str(tmp_path)])
    assert result.exit_code == 4, result.output
    assert "cannot open the tune storage" in result.output


def _study(folder: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(folder / tune_study.JOURNAL)))
    return optuna.load_study(study_name="t", storage=storage)


@pytest.mark.slow
def test_resume_after_an_interruption_loses_and_reruns_no_finished_trial(tmp_path, monkeypatch):
    space = _write(tmp_path, "space.toml", TINY_SPACE)
    root = tmp_path / "a"
    args = ["tune", "--space", str(space), *TUNE_ARGS, "--trials", "3", "--artifacts", str(root)]
    real = tune_job.run_job
    calls: list[tuple[int, str]] = []

    def interrupted_second(job, **kwargs):
        calls.append((job.trial, job.spec.name))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job, **kwargs)

    monkeypatch.setattr(tune_job, "run_job", interrupted_second)
    result = runner.invoke(app, args)
    assert result.exit_code == 130, result.output
    study = _study(root / "tune" / "t")
    first = {t.number: t.values for t in study.get_trials() if t.state.name == "COMPLETE"}
    assert list(first) == [0]
    interrupted = calls[1]

    calls.clear()
    monkeypatch.setattr(tune_job, "run_job", lambda job, **kw: calls.append((job.trial, job.spec.name))
                        or real(job, **kw))
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert calls[0][1] == interrupted[1]  # the interrupted trial reran first, from its start
    assert calls[0][0] != interrupted[0] and len(calls) == 2  # ... as a new trial, then one more
    study = _study(root / "tune" / "t")
    finished = {t.number: t.values for t in study.get_trials() if t.state.name == "COMPLETE"}
    assert finished[0] == first[0] and len(finished) == 3  # trial 0 kept, never rerun
    summary = json.loads(result.output)
    assert summary["trials"] == 3 and summary["front"]
    assert Path(summary["plot"]).is_file() and summary["front"][0]["val_interval"]
    written = (root / "specs.toml").read_text()
    assert all(name in written for name in summary["written"])


def test_a_trial_left_running_by_a_dead_process_is_rerun(tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    study = optuna.create_study(study_name="t", storage=storage, directions=["maximize", "minimize"])
    done = study.ask()
    done.suggest_int("x", 0, 9)
    study.tell(done, [0.5, 1.0])
    killed = study.ask()
    killed.suggest_int("x", 0, 9)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    import socket

    killed.set_user_attr(tune_study.OWNER, f"{socket.gethostname()}:{gone}")
    assert tune_study.recover(study) == [killed.number]
    assert tune_study.recover(study) == []  # enqueued once
    assert tune_study.counted(study) == 1
    rerun = study.ask()
    assert rerun.suggest_int("x", 0, 9) == killed.params["x"]  # the enqueued parameters
    assert rerun.number not in (done.number, killed.number)


def test_front_never_half_writes_the_spec_file(tmp_path):
    from toolkit.core.errors import UsageError
    from toolkit.specs import get_spec, user

    path = _write(tmp_path, "specs.toml", USER_SPEC)
    before = path.read_bytes()
    clash = user.read(path)[0]
    import dataclasses

    other = dataclasses.replace(clash, arch=dataclasses.replace(clash.arch, stem_filters=16))
    fresh = dataclasses.replace(clash, name="fresh")
    with pytest.raises(UsageError, match="already holds another spec"):
        user.append(path, [(fresh, []), (other, [])])
    with pytest.raises(UsageError, match="shadow"):
        user.append(path, [(dataclasses.replace(fresh, name="embedded"), [])],
                    reserved=[get_spec("embedded").name])
    assert path.read_bytes() == before
    assert user.append(path, [(fresh, ["a note"])]) == ["fresh"]
    assert [s.name for s in user.read(path)] == ["my-tiny", "fresh"]


def test_ray_task_payload_carries_the_user_specs(tmp_path, monkeypatch):
    from toolkit.experiments import sweep_ray
    from toolkit.specs import get_spec, registry

    specs = _write(tmp_path, "specs.toml", USER_SPEC)
    monkeypatch.setenv("TOOLKIT_SPECS", str(specs))
    payload = sweep_ray.user_specs_payload()
    assert payload == (str(specs.resolve()), USER_SPEC)
    monkeypatch.delenv("TOOLKIT_SPECS")
    registry.use_spec_file(None)
    try:
        sweep_ray.load_user_specs(payload)  # as a worker whose node cannot see the file
        assert get_spec("my-tiny").origin == "user"
    finally:
        registry.use_spec_file(None)
    with pytest.raises(Exception, match="unknown experiment spec"):
        get_spec("my-tiny")


@pytest.mark.slow
def test_user_spec_trains_from_the_command_line(tmp_path):
    specs = _write(tmp_path, "specs.toml", USER_SPEC)
    result = runner.invoke(app, ["--specs", str(specs), "train", "--exp", "my-tiny", "--limit-train", "300",
                                 "--artifacts", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "a" / "my-tiny" / "metrics.json").read_text())
    assert metrics["test_accuracy"] is not None  # a full run of a user spec evaluates the test set


def test_median_interval_holds_the_median():
    import numpy as np

    times = np.random.default_rng(0).exponential(1e-4, 2000) + 1e-5
    low, high = tune_job.median_interval(times)
    assert low < float(np.median(times)) < high
    assert high - low < 0.2 * float(np.median(times))


@pytest.mark.slow
def test_measured_budgets_and_latency_cost(tmp_path):
    space = _write(tmp_path, "space.toml", TINY_SPACE)
    result = runner.invoke(app, ["tune", "--space", str(space), "--cost", "latency", "--rungs", "1",
                                 "--limit-train", "300", "--trials", "1", "--max-flash-kib", "1000",
                                 "--max-ram-kib", "1000", "--max-int8-ms", "1000", "--no-write", "--json",
                                 "--artifacts", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    member = json.loads(result.output)["front"][0]
    assert member["flash_bytes"] > 0 and member["arena_bytes"] > 0
    assert member["latency_ms"] == pytest.approx(member["cost"]) and member["latency_ms"] > 0
