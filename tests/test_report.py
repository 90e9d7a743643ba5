"""`toolkit report`: joining metrics, exports/parity and real benchmark results; Pareto fronts;
the recommended pick under a budget; the files it writes; exit codes."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from test_benchmark import BENCH_FORMATS, BENCH_SPEC, make_benched_root
from typer.testing import CliRunner

from toolkit import report
from toolkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def benched(tmp_path_factory, trained_root):
    root, _ = make_benched_root(tmp_path_factory, trained_root)
    return root


def test_pareto_front():
    # (accuracy, cost): the middle point is dominated by the first (as accurate, cheaper).
    points = [(0.90, 1.0), (0.90, 2.0), (0.92, 5.0), (0.85, 0.5), (0.85, 0.7)]
    assert report.pareto_front(points) == [True, False, True, True, False]
    assert report.pareto_front([(0.9, 1.0), (0.9, 1.0)]) == [True, True]  # equal points both stay


def test_report_joins_real_results(benched):
    rep = report.build_report(benched)
    keys = {(r.key, r.runtime) for r in rep.rows}
    assert keys == {("keras-fp32", "keras"), *((k, "onnxruntime") for k in BENCH_FORMATS)}
    metrics = json.loads((benched / BENCH_SPEC / "metrics.json").read_text())
    for r in rep.rows:
        assert r.spec == BENCH_SPEC and r.threads == 1 and r.device == "cpu"
        assert r.keras_accuracy == pytest.approx(metrics["test_accuracy"], abs=0.002)
        assert r.accuracy is not None and 0.5 < r.accuracy < 1
        assert r.p50_ms > 0 and r.p99_ms >= r.p50_ms and r.throughput > 0 and r.throughput_batch == 64
        assert r.size_mb > 0 and r.params > 0 and r.mflops > 0
        assert r.pct_peak is not None and r.pct_peak > 0
    keras = next(r for r in rep.rows if r.key == "keras-fp32")
    assert keras.parity == "reference" and keras.delta == 0
    fp32 = next(r for r in rep.rows if r.key == "onnx-fp32")
    assert abs(fp32.delta) < 0.005  # the float32 export predicts what Keras predicts
    # Fronts: every row off the front is dominated by a row on it.
    for flag, cost in (("front_latency", "p50_ms"), ("front_size", "size_mb")):
        front = [r for r in rep.rows if getattr(r, flag)]
        assert front
        for r in rep.rows:
            if not getattr(r, flag):
                assert any(f.accuracy >= r.accuracy and getattr(f, cost) <= getattr(r, cost) for f in front)


def test_recommended_pick_respects_budget(benched):
    rep = report.build_report(benched)
    assert rep.pick is not None and rep.pick.front_latency
    best = max(r.accuracy for r in rep.rows)
    assert rep.pick.accuracy >= best - 0.001
    fastest = min(r.p50_ms for r in rep.rows)
    tight = report.build_report(benched, max_latency_ms=fastest)
    assert tight.pick is not None and tight.pick.p50_ms <= fastest
    smallest = min(r.size_mb for r in rep.rows)
    small = report.build_report(benched, max_size_mb=smallest)
    assert small.pick is not None and small.pick.size_mb <= smallest
    none = report.build_report(benched, max_latency_ms=fastest / 1000)
    assert none.pick is None and "none fits" in none.pick_text


def test_stale_results_are_left_out(benched, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(benched, root)
    run = sorted((root / "bench").glob("*.json"))[-1]
    doc = json.loads(run.read_text())
    for r in doc["results"]:
        if r["key"] == "onnx-dynamic":
            r["sha256"] = "0" * 64  # as if the export had been replaced since it was measured
    run.write_text(json.dumps(doc))
    rep = report.build_report(root)
    assert "onnx-dynamic" not in {r.key for r in rep.rows}
    assert any("since been replaced" in n for n in rep.notes)


def test_report_cli_writes_files(benched):
    result = runner.invoke(app, ["report", "--artifacts", str(benched), "--max-latency-ms", "1000"])
    assert result.exit_code == 0, result.output
    assert "Recommended pick:" in result.output and "p50 batch-1 latency <= 1000 ms" in result.output
    md = (benched / "report.md").read_text()
    assert "| spec | format | runtime |" in md and "Recommended pick" in md and "% of peak" in md
    with open(benched / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and sum(r["recommended"] == "True" for r in rows) == 1
    from PIL import Image

    for name in ("report_accuracy_vs_latency.png", "report_accuracy_vs_size.png"):
        with Image.open(benched / name) as img:
            assert img.format == "PNG" and img.size[0] > 600


def test_report_cli_errors(tmp_path, benched):
    result = runner.invoke(app, ["report", "--artifacts", str(tmp_path)])
    assert result.exit_code == 4 and "no trained model" in result.output
    root = tmp_path / "nobench"
    shutil.copytree(benched / BENCH_SPEC, root / BENCH_SPEC)
    result = runner.invoke(app, ["report", "--artifacts", str(root)])
    assert result.exit_code == 4 and "no benchmark results" in result.output
    (root / "bench").mkdir()
    (root / "bench" / "broken.json").write_text("{not json")
    result = runner.invoke(app, ["report", "--artifacts", str(root)])
    assert result.exit_code == 4 and "corrupted" in result.output
    result = runner.invoke(app, ["report", "--artifacts", str(benched), "--max-size-mb", "-1"])
    assert result.exit_code == 2


def test_run_gains_bench_and_report_stages():
    from toolkit.cli import RUN_STAGES

    names = [name for name, _ in RUN_STAGES]
    assert "bench" in names and "report" in names and names.index("bench") < names.index("report")
