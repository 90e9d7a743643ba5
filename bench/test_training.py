"""One benchmark per training case of the plan in conftest.py: spec x mixed precision x batch size.
Each timed step is a real training step on real images; after the clock the case checks that
variables and the softmax output stayed float32 and every loss was finite (a broken step posts no
time). Results land in pytest-benchmark's JSON and under ARTIFACTS/bench/ (kind "training")."""

from __future__ import annotations


def test_training(benchmark, training_case, bench_state) -> None:
    result = bench_state.run(benchmark, training_case)
    assert result.check["variables_float32"] and result.check["output_dtype"] == "float32"
    assert result.check["losses_finite"] and result.check["steps_checked"] >= 1
    if result.timed:
        assert result.stats.rounds >= 10 and result.stats.images_per_s > 0
