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
from toolkit.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def benched(tmp_path_factory, trained_root):
    root, _ = make_benched_root(tmp_path_factory, trained_root)
    return root


def test_pareto_front():
    # (accuracy, cost) taken exactly: the middle point is dominated by the first (as accurate, cheaper).
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
        assert r.accuracy is not None and 0.5 < r.accuracy < 1 and r.images == 10_000
        ci = r.accuracy_interval
        assert ci.low < r.accuracy < ci.high and ci.high - ci.low < 0.02  # about ±0.7 pt at ~80-90%
        assert r.predictions is not None and len(r.predictions) == 10_000  # parity kept them
        assert r.p50_ms > 0 and r.p99_ms >= r.p50_ms and r.throughput > 0 and r.throughput_batch == 64
        assert r.size_mb > 0 and r.params > 0 and r.mflops > 0
        assert r.pct_peak is not None and r.pct_peak > 0
        assert r.p50_interval is not None and r.throughput_interval is not None  # two processes each
        assert r.p50_interval.low <= r.p50_ms <= r.p50_interval.high
    keras = next(r for r in rep.rows if r.key == "keras-fp32")
    assert keras.parity == "reference" and keras.delta == 0
    assert keras.memory is None and "no memory results" in keras.memory_note  # measured for ONNX only
    fp32 = next(r for r in rep.rows if r.key == "onnx-fp32")
    assert abs(fp32.delta) < 0.005  # the float32 export predicts what Keras predicts
    # The float32 export and Keras agree image by image: a paired test finds nothing to separate.
    assert fp32.verdict.basis in ("McNemar", "best") and (fp32.tied or fp32 is rep.best)
    assert fp32.memory.peak_b1_mb > fp32.memory.baseline_runtime_mb > fp32.memory.baseline_python_mb > 0
    assert fp32.memory.processes == 2 and fp32.memory.load_ms > 0 and fp32.memory.first_call_ms > 0
    assert set(rep.baselines) == {"onnxruntime"}
    # Fronts: a row off a front is dominated by a row that costs less, separably, and is not
    # significantly less accurate.
    judge = report.Judge(labels=_labels(), spreads={})
    for cost in ("latency", "size"):
        assert any(r.fronts.get(cost) for r in rep.rows)
        for b in rep.rows:
            if not b.fronts.get(cost):
                assert any(judge.cheaper(a, b, cost) and judge.accuracy(b, a).better != "a" for a in rep.rows)


def _labels():
    from toolkit.core.data import load

    return load().y_test


def test_recommended_pick_respects_budget(benched):
    rep = report.build_report(benched)
    assert rep.pick is not None and rep.pick.tied and rep.best is not None
    assert rep.best.accuracy == max(r.accuracy for r in report.usable(rep.rows))
    tied = [r for r in report.usable(rep.rows) if r.tied]
    assert rep.pick.p50_ms == min(r.p50_ms for r in tied)  # the fastest tied row
    fastest = min(r.p50_ms for r in rep.rows)
    tight = report.build_report(benched, max_latency_ms=fastest)
    assert tight.pick is not None and tight.pick.p50_ms <= fastest
    smallest = min(r.size_mb for r in rep.rows)
    small = report.build_report(benched, max_size_mb=smallest)
    assert small.pick is not None and small.pick.size_mb <= smallest
    lightest = min(r.peak_b1_mb for r in rep.rows if r.peak_b1_mb is not None)
    light = report.build_report(benched, max_memory_mb=lightest)
    assert light.pick is not None and light.pick.peak_b1_mb <= lightest
    none = report.build_report(benched, max_latency_ms=fastest / 1000)
    assert none.pick is None and "none fits" in none.pick_text
    override = report.build_report(benched, tolerance=0.5)  # 50 points: everything ties
    assert all(r.tied for r in report.usable(override.rows)) and "explicit override" in override.rule


def test_stale_results_are_left_out(benched, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(benched, root)
    run = sorted((root / "bench").glob("*-inference-*.json"))[-1]
    doc = json.loads(run.read_text())
    for r in doc["results"]:
        if r["key"] == "onnx-dynamic":
            r["sha256"] = "0" * 64  # as if the export had been replaced since it was measured
    run.write_text(json.dumps(doc))
    rep = report.build_report(root)
    assert "onnx-dynamic" not in {r.key for r in rep.rows}
    assert any("onnx-dynamic on" in n and "since replaced" in n for n in rep.notes)


def test_report_cli_writes_files(benched):
    result = runner.invoke(app, ["report", "--artifacts", str(benched), "--max-latency-ms", "1000"])
    assert result.exit_code == 0, result.output
    assert "Recommended pick:" in result.output and "p50 batch-1 latency <= 1000 ms" in result.output
    assert "Memory baselines" in result.output and "vs best" in result.output
    md = (benched / "report.md").read_text()
    assert "| # | spec | format | runtime |" in md and "Recommended pick" in md and "% of peak" in md
    assert "McNemar" in md and "| runtime | python + numpy MB |" in md
    with open(benched / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and sum(r["recommended"] == "True" for r in rows) == 1
    for row in rows:
        assert float(row["test_accuracy_ci95_low"]) < float(row["test_accuracy"]) < float(
            row["test_accuracy_ci95_high"])
        assert float(row["p50_ci95_low"]) <= float(row["p50_ms_batch1"]) <= float(row["p50_ci95_high"])
        assert row["processes"] == "2" and row["vs_best"]
    assert {r["format_key"] for r in rows if r["peak_rss_b1_mb"]} == set(BENCH_FORMATS)
    from PIL import Image

    for name in ("report_accuracy_vs_latency.png", "report_accuracy_vs_size.png",
                 "report_accuracy_vs_memory.png"):
        with Image.open(benched / name) as img:
            assert img.format == "PNG" and img.size[0] > 600


def test_a_budget_nothing_meets_is_one_line_and_exit_0(benched):
    result = runner.invoke(app, ["report", "--artifacts", str(benched), "--max-memory-mb", "1"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "Recommended pick: none fits the budget (batch-1 peak memory <= 1 MB)" in flat


def test_old_records_without_repeats_memory_or_predictions_still_report(benched, tmp_path):
    """Records of the previous version: bench files without repeats or pids, no memory files,
    parity.json without per-image predictions. The report works; its columns say why they are empty."""
    root = tmp_path / "old"
    shutil.copytree(benched, root)
    for path in (root / "bench").glob("*.json"):
        doc = json.loads(path.read_text())
        if doc.get("kind") == "memory":
            path.unlink()
            continue
        doc["results"] = [{k: v for k, v in r.items() if k not in ("repeat", "pid")}
                          for r in doc["results"] if not r.get("repeat")]
        path.write_text(json.dumps(doc))
    parity = json.loads((root / BENCH_SPEC / "parity.json").read_text())
    parity.pop("schema_version")
    for entry in parity["exports"]:
        for key in ("predictions", "mcnemar_p", "discordant", "accuracy_ci", "sha256"):
            entry.pop(key, None)
    parity["keras"].pop("predictions")
    (root / BENCH_SPEC / "parity.json").write_text(json.dumps(parity))
    (root / BENCH_SPEC / "test_predictions.npy").unlink(missing_ok=True)
    rep = report.build_report(root)
    assert len(rep.rows) == 3 and rep.pick is not None
    for r in rep.rows:
        assert r.p50_interval is None and r.processes == 1 and r.memory is None
        assert r.predictions is None and r.verdict is not None
    notes = " ".join(rep.notes)
    assert "measured in one process only" in notes and "no memory results" in notes
    assert "toolkit parity --exp DNN_2L_Dropout_Exp2" in notes and "overlap of 95% intervals" in notes
    result = runner.invoke(app, ["report", "--artifacts", str(root)])
    assert result.exit_code == 0, result.output


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
    from toolkit.experiments.pipeline import STAGES

    names = [s.name for s in STAGES]
    assert "bench" in names and "report" in names and names.index("bench") < names.index("report")
