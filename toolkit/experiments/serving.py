"""The serve stage of `toolkit run --serve`: serve the spec's pick in a child process (TensorFlow
blocked), with batching on (64) and off (1), and run the server scenario on /v1/classify (p99
<= 10 ms) and /v1/similar (<= 25 ms), and on /v1/ceiling at each bound (batching on), so the
report shows what serving costs beside what the file costs in process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from toolkit.core.loadtest_record import LoadtestResult, write_result
from toolkit.loadtest.run import LoadtestView, measure, plot, run_loadtest
from toolkit.loadtest.scenarios import LoadSettings

SETTINGS = (("batching on", "64"), ("batching off", "1"))
ENDPOINTS = ("classify", "similar")


class ServingView(LoadtestView, Protocol):
    def server_started(self, url: str, max_batch: str) -> None: ...

    def summary(self, results: list[LoadtestResult]) -> None: ...


def serve_and_loadtest(*, exp: str, root: Path | None, data_dir: Path | None, view: ServingView) -> list[Any]:
    """Every load test of the stage, in the order it ran them."""
    from toolkit.serve.process import spawn

    common = ["--exp", exp, *(["--artifacts", str(root)] if root else []),
              *(["--data-dir", str(data_dir)] if data_dir else [])]
    results: list[LoadtestResult] = []
    for label, max_batch in SETTINGS:
        with spawn([*common, "--max-batch", max_batch]) as server:
            view.server_started(server.url, max_batch)
            for endpoint in _endpoints(server.url, view):
                settings = LoadSettings(url=server.url, endpoint=endpoint, label=label)
                ceiling = None
                if label == "batching on":
                    bound = replace(settings, endpoint="ceiling", p99_ms=settings.bound(),
                                    label=f"ceiling at the {endpoint} bound")
                    ceiling = measure(bound, view, data_dir=data_dir)
                    view.wrote("result", write_result(ceiling, root))
                    results.append(ceiling)
                results.append(run_loadtest(settings, view, root=root, data_dir=data_dir, ceiling=ceiling))
    view.summary(results)
    curve = plot(results, root, "stage")
    if curve is not None:
        view.wrote("curve", curve)
    return results


def _endpoints(url: str, view: ServingView) -> tuple[str, ...]:
    """ENDPOINTS, less similar when the server started without its recommender (`toolkit run` does
    not build the embedding model; the server says how to)."""
    from toolkit.loadtest.target import get_model, parse_target

    off = get_model(parse_target(url)).get("recommender_off")
    if off is None:
        return ENDPOINTS
    view.progress(f"similar is not load-tested: {off}")
    return tuple(e for e in ENDPOINTS if e != "similar")
