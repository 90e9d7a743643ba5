"""One load test as `toolkit loadtest` and the pipeline's serve stage run it: optionally the
stack's ceiling (/v1/ceiling) at the same bound first, then the endpoint, each result written as
its record (toolkit.core.loadtest_record) and, for the server scenario, the curve as a PNG.
Presentation stays with the caller, through `LoadtestView`."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from toolkit.core import artifacts
from toolkit.core.loadtest_record import LoadtestResult, write_result
from toolkit.loadtest.scenarios import LoadSettings


class LoadtestView(Protocol):
    def started(self, settings: LoadSettings) -> None: ...

    def progress(self, line: str) -> None: ...

    def finished(self, result: LoadtestResult) -> None: ...

    def wrote(self, what: str, path: Path) -> None: ...

    def fraction(self, result: LoadtestResult, served: float, top: float) -> None: ...

    def completed(self, result: LoadtestResult) -> None: ...


def measure(settings: LoadSettings, view: LoadtestView, *, data_dir: Path | None) -> LoadtestResult:
    """Run one scenario and show it (not written)."""
    from toolkit.loadtest import scenarios

    view.started(settings)
    result = scenarios.run(settings, progress=view.progress, data_dir=data_dir)
    view.finished(result)
    return result


def run_loadtest(settings: LoadSettings, view: LoadtestView, *, root: Path | None, data_dir: Path | None,
                 with_ceiling: bool = False, ceiling: LoadtestResult | None = None) -> LoadtestResult:
    """Run, show and write one load test; with `with_ceiling` (or a given ceiling result) also state
    the rate as a fraction of /v1/ceiling's at the same bound. Returns the result."""
    if with_ceiling and ceiling is None and settings.endpoint != "ceiling":
        label = (settings.label + " ceiling").strip()
        ceiling = measure(replace(settings, endpoint="ceiling", p99_ms=settings.bound(), label=label), view,
                          data_dir=data_dir)
        view.wrote("result", write_result(ceiling, root))
    result = measure(settings, view, data_dir=data_dir)
    if ceiling is not None:
        add_fraction(result, ceiling, view)
    view.wrote("result", write_result(result, root))
    if result.scenario == "server":
        curve = plot([r for r in (result, ceiling) if r is not None], root, result.endpoint)
        if curve is not None:
            view.wrote("curve", curve)
    view.completed(result)
    return result


def add_fraction(result: LoadtestResult, ceiling: LoadtestResult, view: LoadtestView) -> None:
    """The served rate as a fraction of the ceiling's, stored in the result's summary."""
    served, top = result.summary.get("best_rate"), ceiling.summary.get("best_rate")
    result.summary["ceiling_rate"] = top
    result.summary["ceiling_file"] = Path(ceiling.file).name
    result.summary["fraction_of_ceiling"] = round(served / top, 3) if served and top else None
    if served and top:
        view.fraction(result, served, top)


def plot(results: list[Any], root: Path | None, name: str) -> Path | None:
    """The curve (rate vs p99) of server-scenario results beside their records."""
    from toolkit.loadtest.plot import plot_curves

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return plot_curves(results, artifacts.bench_dir(root) / f"{stamp}-loadtest-{name}-curve.png")
