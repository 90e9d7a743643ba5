"""`toolkit sweep`: local and Ray backends on tiny real runs (1 epoch, 200 real images)."""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli.app import app
from toolkit.core import artifacts
from toolkit.experiments import sweep, sweep_plan, sweep_ray, sweep_tables
from toolkit.specs import get_spec

SPECS = ("DNN_1L_No_Dropout_Exp1", "CNN_1L_Dropout_Exp6")
SEEDS = 2
LIMIT = 200
RUN_ID = "seed{seed}-e1-n200"
runner = CliRunner()


def _sweep_args(root: Path, *extra: str, specs=SPECS, seeds=SEEDS) -> list[str]:
    args = ["sweep", "--seeds", str(seeds), "--epochs", "1", "--limit-train", str(LIMIT),
            "--artifacts", str(root)]
    for name in specs:
        args += ["--exp", name]
    return args + list(extra)


def _run_metrics(root: Path, name: str, seed: int) -> dict:
    return json.loads((root / name / "runs" / RUN_ID.format(seed=seed) / "metrics.json").read_text())


def _csv_rows(root: Path) -> dict[str, dict[str, str]]:
    with open(root / "sweep.csv", newline="") as fh:
        return {row["spec"]: row for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def local_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep-local")
    result = runner.invoke(app, _sweep_args(root))
    assert result.exit_code == 0, result.output
    return root


def test_local_sweep_table_equals_the_runs_metrics(local_root):
    rows = _csv_rows(local_root)
    assert set(rows) == set(SPECS)
    for name in SPECS:
        runs = [_run_metrics(local_root, name, seed) for seed in range(SEEDS)]
        for figure in sweep_tables.FIGURES:
            values = [float(m[figure]) for m in runs]
            assert float(rows[name][f"{figure}_mean"]) == pytest.approx(statistics.fmean(values))
            assert float(rows[name][f"{figure}_std"]) == pytest.approx(statistics.stdev(values))
            assert float(rows[name][f"{figure}_min"]) == pytest.approx(min(values))
            assert float(rows[name][f"{figure}_max"]) == pytest.approx(max(values))
        seed_acc = get_spec(name).reported.test_accuracy
        assert float(rows[name]["test_accuracy_seed"]) == pytest.approx(seed_acc)
        assert float(rows[name]["test_accuracy_diff"]) == pytest.approx(
            statistics.fmean(m["test_accuracy"] for m in runs) - seed_acc)
        assert rows[name]["runs_done"] == str(SEEDS)
        # The Wilson interval of one run's accuracy at the mean, on the 10,000 test images.
        from toolkit.core.stats import interval_of_accuracy

        ci = interval_of_accuracy(statistics.fmean(m["test_accuracy"] for m in runs), 10_000)
        assert float(rows[name]["test_accuracy_ci95_low"]) == pytest.approx(ci.low)
        assert float(rows[name]["test_accuracy_ci95_high"]) == pytest.approx(ci.high)
        # A sweep never makes a run the spec's current run.
        assert not artifacts.spec_artifacts(name, local_root).model.exists()
    ranks = sorted(rows.values(), key=lambda r: int(r["rank"]))
    assert [float(r["test_accuracy_mean"]) for r in ranks] == sorted(
        (float(r["test_accuracy_mean"]) for r in ranks), reverse=True)
    markdown = (local_root / "sweep.md").read_text()
    assert all(name in markdown for name in SPECS) and "| rank |" in markdown and "95% CI" in markdown
    assert (local_root / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_sweep_trains_nothing_and_table_matches(local_root):
    before = {(n, s): (local_root / n / "runs" / RUN_ID.format(seed=s) / "model.keras").stat().st_mtime_ns
              for n in SPECS for s in range(SEEDS)}
    csv_before = (local_root / "sweep.csv").read_text()
    result = runner.invoke(app, _sweep_args(local_root))
    assert result.exit_code == 0, result.output
    record = json.loads((local_root / "sweep.json").read_text())
    assert {r["state"] for r in record["runs"]} == {"reused"}
    after = {(n, s): (local_root / n / "runs" / RUN_ID.format(seed=s) / "model.keras").stat().st_mtime_ns
             for n in SPECS for s in range(SEEDS)}
    assert after == before
    assert (local_root / "sweep.csv").read_text() == csv_before
    table = runner.invoke(app, _sweep_args(local_root, "--table"))
    assert table.exit_code == 0, table.output
    assert (local_root / "sweep.csv").read_text() == csv_before


@pytest.mark.slow
def test_failing_run_is_isolated_and_exit_code_is_7(tmp_path):
    name = SPECS[0]
    arts = artifacts.spec_artifacts(name, tmp_path)
    # Another process training the same run holds its lock: a real failure of one run.
    with artifacts.exclusive_lock(arts.lock_file(RUN_ID.format(seed=1)), what="test holder"):
        result = runner.invoke(app, _sweep_args(tmp_path, specs=(name,)))
    assert result.exit_code == 7, result.output
    assert "1 of 2 runs failed" in result.output
    assert (arts.run_dir(RUN_ID.format(seed=0)) / "metrics.json").is_file()
    assert not arts.run_dir(RUN_ID.format(seed=1)).exists()
    row = _csv_rows(tmp_path)[name]
    assert row["runs_done"] == "1" and row["runs_failed"] == "1"
    assert "seed 1: BusyError" in row["errors"]
    assert "BusyError" in (tmp_path / "sweep.md").read_text()
    # --table remembers why the run is missing; the retry then completes it.
    table = runner.invoke(app, _sweep_args(tmp_path, "--table", specs=(name,)))
    assert table.exit_code == 0 and "BusyError" in table.output
    retry = runner.invoke(app, _sweep_args(tmp_path, specs=(name,)))
    assert retry.exit_code == 0, retry.output
    assert "1 trained, 1 reused" in retry.output


def test_install_run_from_bytes_is_reused_by_train(local_root, tmp_path, dataset):
    """The multi-node path: a run's files shipped as bytes land where train() reuses them."""
    from toolkit.training import train

    name = SPECS[0]
    state = sweep_plan.plan_sweep([name], seeds=2, epochs=1, limit_train=LIMIT)
    source = local_root / name / "runs" / RUN_ID.format(seed=0)
    files = {f: (source / f).read_bytes() for f in artifacts.RUN_FILES}
    installed = sweep_ray.install_run(tmp_path, state.runs[0], files, dataset.checksums)
    assert installed == tmp_path / name / "runs" / RUN_ID.format(seed=0)
    result = train.train(train.TrainRequest(name, seed=0, epochs=1, limit_train=LIMIT, root=tmp_path),
                         promote=False)
    assert result.reused and result.metrics == _run_metrics(local_root, name, 0)
    # Files whose manifest says seed 0 are not accepted as seed 1's run.
    with pytest.raises(artifacts.ArtifactError, match="manifest"):
        sweep_ray.install_run(tmp_path, state.runs[1], files, dataset.checksums)


@pytest.mark.parametrize("args, code, message", [
    (["--max-concurrent", "2"], 2, "--backend ray"),
    (["--address", "127.0.0.1:6379"], 2, "--backend ray"),
    (["--backend", "slurm"], 2, "--backend must be one of"),
    (["--exp", "RNN_*"], 2, "matches no spec"),
])
def test_usage_errors_are_one_line(tmp_path, args, code, message):
    result = runner.invoke(app, ["sweep", "--artifacts", str(tmp_path), *args])
    assert result.exit_code == code
    assert message in result.output and "Traceback" not in result.output


def test_table_without_runs_is_an_artifact_error(tmp_path):
    result = runner.invoke(app, _sweep_args(tmp_path, "--table"))
    assert result.exit_code == 4
    assert "run the sweep first" in result.output


def test_ray_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the extra
    result = runner.invoke(app, _sweep_args(tmp_path, "--backend", "ray"))
    assert result.exit_code == 2
    assert "pip install '.[ray]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install '.[ray]')")
    started = sweep_ray.start_ray(ray, None)
    yield ray
    if started:
        ray.shutdown()


def test_ray_backend_matches_local(ray_instance, local_root, tmp_path):
    # Seed 0 of both specs (two tasks side by side) keeps this under a minute on 2 cores.
    shared = tmp_path / "shared"
    result = runner.invoke(app, _sweep_args(shared, "--backend", "ray", seeds=1))
    assert result.exit_code == 0, result.output
    assert "2 trained" in result.output
    # The path a node without the caller's filesystem takes: the run comes back as bytes.
    shipped = tmp_path / "shipped"
    state = sweep_plan.plan_sweep([SPECS[0]], seeds=1, epochs=1, limit_train=LIMIT, backend="ray")
    sweep.run_sweep(state, root=shipped, transfer="bytes")
    assert [r.state for r in state.runs] == ["trained"]
    for root, names in ((shared, SPECS), (shipped, SPECS[:1])):
        for name in names:
            ours, local = _run_metrics(root, name, 0), _run_metrics(local_root, name, 0)
            assert ours["manifest"] == local["manifest"]
            # Op determinism is on, so this is normally exact; 20 of 10,000 images of slack
            # covers thread-count differences in TensorFlow's CPU kernels.
            assert ours["test_accuracy"] == pytest.approx(local["test_accuracy"], abs=2e-3)
    # The shipped run was installed into the caller's root, and the caller's rule reuses it.
    again = sweep_plan.plan_sweep([SPECS[0]], seeds=1, epochs=1, limit_train=LIMIT, backend="ray")
    sweep.run_sweep(again, root=shipped)
    assert [r.state for r in again.runs] == ["reused"]
