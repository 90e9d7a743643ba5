"""The report's rules on the real test labels: the tie group and the pick, the fronts that need
separable differences, the seed-spread and unpaired fallbacks, the tolerance override, the budget
that nothing meets, and the one column list every output reads. Rows are built directly (their
predictions are the real labels with chosen images wrong), so each rule is checked on its own."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from toolkit import report
from toolkit.core import stats
from toolkit.report import Budget, Judge, Row
from toolkit.report import build as report_build
from toolkit.report import columns as report_columns
from toolkit.report import pick as report_pick


@pytest.fixture(scope="module")
def labels(dataset) -> np.ndarray:
    return dataset.y_test


def _predictions(labels: np.ndarray, wrong: range | list[int]) -> np.ndarray:
    """The labels with `wrong` images shifted to another class."""
    pred = labels.copy().astype(np.uint8)
    idx = np.asarray(list(wrong))
    pred[idx] = (pred[idx] + 1) % 10
    return pred


def _row(labels, number: int, key: str, wrong, p50: float | None, *, spec="CNN_1L_Dropout_Exp6",
         repeats: tuple[float, ...] = (), size=10.0, runtime="litert", predictions=True) -> Row:
    pred = _predictions(labels, wrong)
    row = Row(spec=spec, key=key, format=key.split("-")[0], precision=key.split("-")[1], runtime=runtime,
              device="cpu", threads=1, accuracy=float(np.mean(pred == labels)), keras_accuracy=None,
              parity="pass", size_mb=size, params=1, mflops=1.0, images=len(labels), p50_ms=p50,
              predictions=pred if predictions else None, number=number)
    if repeats:
        row.p50_interval = stats.t_interval(repeats)
        row.p50_ms = row.p50_interval.estimate
    return row


def _decide(rows, judge, budget=Budget()):
    report.mark_overlaps(rows)
    report.mark_fronts(rows, judge)
    return report.recommend(rows, judge, budget)


def test_exp6_like_rows_one_or_two_images_apart_are_one_tied_group(labels):
    """Today's report put fp16 (one image better) and two fast rows on a front; the new rule
    sees one tied group and picks its fastest member."""
    base = list(range(741))  # 92.59% on 10,000 images
    rows = [
        _row(labels, 1, "onnx-fp32", base, 3.6, size=44.4),
        _row(labels, 2, "onnx-fp16", base[1:], 5.0, size=22.2),  # one image better: 92.60%
        _row(labels, 3, "tflite-int8", [*base[:-10], *range(5000, 5011)], 0.481, size=11.1),  # 1 worse
        _row(labels, 4, "tflite-dynamic", base, 0.480, size=11.1),
    ]
    judge = Judge(labels=labels, spreads={})
    pick, best, text = _decide(rows, judge)
    assert best.key == "onnx-fp16" and all(r.tied for r in rows)
    assert pick.key == "tflite-dynamic" and "fastest of the 4 rows tied" in text
    fp16 = rows[1]
    assert fp16.verdict.basis == "best" and rows[0].verdict.p_value == 1.0
    assert rows[2].verdict.better is None and rows[2].verdict.p_value > 0.05
    # Without intervals the latencies are taken as measured; the int8 row is 1 us slower.
    assert rows[3].fronts["latency"] == "front" and not rows[2].fronts.get("latency")


def test_tie_and_front_need_separable_differences(labels):
    rows = [
        _row(labels, 1, "onnx-fp32", range(700), None, repeats=(3.0, 3.1, 3.2)),  # best, slow
        _row(labels, 2, "onnx-int8", range(702), None, repeats=(0.50, 0.52, 0.51)),  # tied, fast
        _row(labels, 3, "onnx-dynamic", range(701), None, repeats=(0.49, 0.53, 0.60)),  # tied, p50 overlaps 2
        _row(labels, 4, "tflite-int8", range(900), None, repeats=(0.30, 0.31, 0.30)),  # much worse, fastest
    ]
    judge = Judge(labels=labels, spreads={})
    pick, best, _ = _decide(rows, judge)
    assert best is rows[0] and [r.tied for r in rows] == [True, True, True, False]
    assert rows[3].verdict.better == "a" and rows[3].verdict.p_value < 0.001  # 200 images: real
    assert pick is rows[1]  # the fastest tied row
    assert rows[1].p50_overlaps == [3] and rows[2].p50_overlaps == [2] and rows[3].p50_overlaps == []
    # fp32 is dominated (int8 costs less, separably, and fp32 is not significantly more accurate);
    # int8 and dynamic cannot be separated from each other: both on the front, marked tied; the
    # much less accurate fastest row stays on the front (nothing cheaper).
    assert not rows[0].fronts.get("latency")
    assert rows[1].fronts["latency"] == rows[2].fronts["latency"] == "tied"
    assert rows[3].fronts["latency"] == "front"
    assert rows[1] is pick and "Not separable from it in batch-1 p50" in report_pick._pick_text(
        pick, best, [r for r in rows if r.tied], Budget())


def test_significantly_better_row_is_not_dominated_by_a_cheaper_one(labels):
    rows = [_row(labels, 1, "onnx-fp32", range(700), 3.0, size=40.0),
            _row(labels, 2, "onnx-int8", range(800), 0.5, size=10.0)]
    judge = Judge(labels=labels, spreads={})
    _decide(rows, judge)
    assert rows[0].fronts["latency"] == "front" and rows[1].fronts["latency"] == "front"
    assert rows[0].fronts["size"] == "front"


def test_seed_spread_ties_rows_of_two_specs(labels):
    a = _row(labels, 1, "onnx-fp32", range(700), 1.0, spec="CNN_1L_Dropout_Exp6")
    b = _row(labels, 2, "onnx-fp32", range(800), 0.5, spec="DNN_2L_Dropout_Exp5")  # 1 pt less accurate
    paired_only = Judge(labels=labels, spreads={})
    assert paired_only.accuracy(a, b).better == "a"  # McNemar: significant
    spread = stats.seed_spread([0.90, 0.915, 0.93])  # std 0.015 > the 0.01 gap
    judge = Judge(labels=labels, spreads={"DNN_2L_Dropout_Exp5": spread})
    verdict = judge.accuracy(a, b)
    assert verdict.better is None and "seed spread" in verdict.basis
    same_spec = _row(labels, 3, "onnx-int8", range(800), 0.4, spec="CNN_1L_Dropout_Exp6")
    assert judge.accuracy(a, same_spec).better == "a"  # one training: the seed spread does not apply


def test_rows_without_predictions_fall_back_to_interval_overlap(labels):
    a = _row(labels, 1, "onnx-fp32", range(700), 1.0)
    close = _row(labels, 2, "onnx-int8", range(720), 0.5, predictions=False)
    far = _row(labels, 3, "tflite-int8", range(1500), 0.4, predictions=False)
    judge = Judge(labels=labels, spreads={})
    verdict = judge.accuracy(a, close)
    assert verdict.better is None and "no per-image predictions" in verdict.basis
    assert judge.accuracy(a, far).better == "a" and "unpaired" in judge.accuracy(a, far).basis
    assert Judge(labels=None, spreads={}).paired(a, a) is None  # no labels: no paired test


def test_tolerance_is_an_explicit_override(labels):
    a = _row(labels, 1, "onnx-fp32", range(700), 1.0)
    b = _row(labels, 2, "onnx-int8", range(800), 0.5)  # 1 point worse: significant
    assert Judge(labels=labels, spreads={}).accuracy(a, b).better == "a"
    override = Judge(labels=labels, spreads={}, tolerance=0.015)
    verdict = override.accuracy(a, b)
    assert verdict.better is None and verdict.p_value is None and "--accuracy-tolerance" in verdict.basis
    assert "explicit override" in report_build._rule_text(0.015)


def test_a_budget_nothing_meets_names_the_cheapest(labels):
    rows = [_row(labels, 1, "onnx-fp32", range(700), 3.0), _row(labels, 2, "onnx-int8", range(702), 0.5)]
    pick, best, text = _decide(rows, Judge(labels=labels, spreads={}), Budget(max_latency_ms=0.1))
    assert pick is None and best is None
    assert text.startswith("Recommended pick: none fits the budget (p50 batch-1 latency <= 0.1 ms)")
    assert "Fastest: CNN_1L_Dropout_Exp6 onnx-int8" in text
    # A memory budget excludes rows whose memory was not measured (it cannot be shown to fit).
    pick, _, text = _decide(rows, Judge(labels=labels, spreads={}), Budget(max_memory_mb=1e6))
    assert pick is None and "batch-1 peak memory <= 1e+06 MB" in text


def test_every_output_reads_the_one_column_list(labels, monkeypatch):
    rows = [_row(labels, 1, "onnx-fp32", range(700), 3.0), _row(labels, 2, "onnx-int8", range(702), 0.5)]
    judge = Judge(labels=labels, spreads={})
    pick, best, text = _decide(rows, judge)
    rep = report.Report(root=Path("."), rows=rows, peaks={}, pick=pick, pick_text=text, budget={},
                        best=best, rule=report_build._rule_text(None))
    extra = report_columns.Column("answer", "answer", lambda r, rep: "42",
                                  (("answer_csv", lambda r, rep: 42),), report_columns.ALL_VIEWS)
    monkeypatch.setattr(report_columns, "COLUMNS", [*report_columns.COLUMNS, extra])
    titles, cells = report_columns.table_rows(rep, report_columns.TERMINAL)
    assert titles[-1] == "answer" and cells[0][-1] == "42"
    assert report_columns.table_rows(rep, report_columns.BENCH_TABLE)[0][-1] == "answer"
    parsed = list(csv.DictReader(io.StringIO(report_columns.to_csv(rep))))
    assert parsed[0]["answer_csv"] == "42" and parsed[1]["recommended"] == "True"
    assert parsed[0]["test_accuracy_ci95_low"] and parsed[0]["vs_best"] == "best"
    assert parsed[1]["vs_best"] == "tied p=0.500"  # two images apart
    markdown = report_columns.to_markdown(rep, [])
    assert "| answer |" in markdown and "| 42 |" in markdown
    names = [name for c in report_columns.COLUMNS for name, _ in c.csv]
    assert len(names) == len(set(names))  # one CSV name per field
