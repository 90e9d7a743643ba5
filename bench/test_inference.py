"""One benchmark per case of the plan in conftest.py: spec x format x precision x runtime x device
x batch x threads. Each call's output is checked; the result lands in pytest-benchmark's JSON
(extra_info) and under ARTIFACTS/bench/."""

from __future__ import annotations


def test_inference(benchmark, bench_case, bench_state) -> None:
    result = bench_state.run(benchmark, bench_case)
    assert result.check["calls_checked"] >= 1
    if result.timed:
        assert result.stats.rounds >= 1 and result.stats.p50_ms > 0
