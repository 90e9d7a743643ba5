"""`toolkit loadtest`: an open-loop load generator for `toolkit serve` (MLPerf-style scenarios).

    result = scenarios.run(LoadSettings(url="http://127.0.0.1:8000", endpoint="classify"))
    path = record.write_result(result, root)        # ARTIFACTS/bench/*-loadtest-*.json

client: the engine (timerfd-scheduled sends, httptools parsing); scenarios: server (rate search),
single-stream, offline; record: the typed, versioned result file (kind "loadtest").
"""

from toolkit.loadtest.record import LoadtestResult, Step, load_results, read_result, write_result
from toolkit.loadtest.scenarios import LoadSettings, run

__all__ = ["LoadSettings", "LoadtestResult", "Step", "load_results", "read_result", "run", "write_result"]
