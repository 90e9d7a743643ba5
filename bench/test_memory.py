"""Deployment cost per file x runtime (with --bench-memory): each measurement in a fresh child
process that imports only that runtime. Results land under ARTIFACTS/bench/ (kind "memory")."""

from __future__ import annotations

import pytest

RUNTIME_MODULES = {"keras": "tensorflow", "keras-predict": "tensorflow", "onnxruntime": "onnxruntime",
                   "litert": "ai_edge_litert"}


# The benchmark fixture is requested so that --benchmark-only keeps this test; memory is not a
# timing, so pytest-benchmark's clock is not used.
@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")
def test_memory(benchmark, memory_case, bench_state) -> None:
    results = bench_state.run_untimed(memory_case)
    for result in results:
        own = RUNTIME_MODULES[memory_case.runtime]
        assert result.imported[own] and not any(
            loaded for module, loaded in result.imported.items()
            if module not in (own, "keras" if own == "tensorflow" else own))
        if result.unavailable:
            pytest.skip(f"peak RSS unavailable here: {result.unavailable}")
        peaks = result.peaks_mb
        assert 0 < peaks["python_numpy"] <= peaks["runtime_imported"] <= peaks["loaded"] \
            <= peaks["serving_b1"] <= peaks["serving_batch"]
        assert result.ms["load"] > 0 and result.ms["first_call"] > 0
    benchmark.extra_info.update(results[0].to_dict())
