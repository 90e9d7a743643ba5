"""One case per spec and seed of --bench-exp with --bench-kind time-to-accuracy: a whole training
(or its completed run, reused), its wall time and its final model's test accuracy (selected on the
validation holdout). Results land under ARTIFACTS/bench/ (kind "time-to-accuracy")."""

from __future__ import annotations


def test_time_to_accuracy(time_to_accuracy_case, bench_state) -> None:
    (result,) = bench_state.run_untimed(time_to_accuracy_case)
    assert result.train_seconds > 0 and 0 < result.test_accuracy <= 1 and result.test_images > 0
    assert result.reached in (None, result.test_accuracy >= (result.threshold or 0))
