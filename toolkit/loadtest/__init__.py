"""`toolkit loadtest`: an open-loop load generator for `toolkit serve` (MLPerf-style scenarios).

    result = scenarios.run(LoadSettings(url="http://127.0.0.1:8000", endpoint="classify"))
    path = write_result(result, root)        # ARTIFACTS/bench/<time>-loadtest-cli-<pid>.json

settings: what a load test is asked to do; target: the server, its uploads and metrics; client:
the engine (timerfd-scheduled sends, httptools parsing); steps: one load level; scenarios:
server (rate search), single-stream, offline; run: one load test, written and shown. The record
is toolkit.core.loadtest_record (the report reads it too).
"""

from toolkit.core.loadtest_record import LoadtestResult, Step, load_results, read_result, write_result
from toolkit.loadtest.scenarios import run
from toolkit.loadtest.settings import LoadSettings

__all__ = ["LoadSettings", "LoadtestResult", "Step", "load_results", "read_result", "run", "write_result"]
