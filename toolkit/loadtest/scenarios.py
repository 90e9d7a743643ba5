"""MLPerf-style scenarios over the engine in `client`, against a running `toolkit serve`.

- server: Poisson arrivals at a target rate; each step lasts at least `step_seconds` (10) and
  `min_queries` (662, enough for a p99 to mean something). The rate doubles while steps pass, then
  is bisected (geometric) between the last pass and the first failure. A step passes when the
  client kept its schedule (send lag p99 <= 1 ms), every request succeeded and p99 latency,
  counted from each request's scheduled time, is within the bound. `rates` instead measures a
  fixed list of rates: a curve of rate against p99.
- single-stream: one request at a time; p90 latency.
- offline: every request due at once; throughput.

Before and after each step the server's /metrics is read: the batch sizes it ran and the CPU it
used, beside the client's own CPU, so a slow client is never mistaken for a slow server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.core.errors import UsageError
from toolkit.core.loadtest_record import LoadtestResult, Step
from toolkit.loadtest.settings import (
    ENDPOINTS,
    MAX_SEND_LAG_MS,
    SCENARIOS,
    UPLOADS,
    LoadSettings,
    step_queries,
)
from toolkit.loadtest.steps import poisson_offsets, run_engine, run_step
from toolkit.loadtest.target import Target, encode_requests, get_model, machine, parse_target, png_uploads

Progress = Callable[[str], None]


@dataclass
class _Budget:
    settings: LoadSettings
    started: float = field(default_factory=time.monotonic)
    requests: int = 0

    def allows(self, queries: int, seconds: float) -> bool:
        return (
            self.requests + queries <= self.settings.max_requests
            and time.monotonic() - self.started + seconds + self.settings.timeout_s
            <= self.settings.max_seconds
        )


def server_scenario(
    target: Target, path: str, requests: list[bytes], settings: LoadSettings, progress: Progress
) -> tuple[list[Step], list[str]]:
    rng = np.random.default_rng(settings.seed)
    budget, steps, notes = _Budget(settings), [], []

    def measure(rate: float) -> Step | None:
        # The budget first: a rate's schedule is allocated only when its expected size fits the
        # bounds; the drawn schedule (a little longer or shorter) is checked again.
        queries = step_queries(rate, settings.step_seconds, settings.min_queries)
        offsets = None
        if budget.allows(queries, max(settings.step_seconds, queries / rate)):
            offsets = poisson_offsets(rate, settings.step_seconds, settings.min_queries, rng)
        if offsets is None or not budget.allows(len(offsets), offsets[-1] / 1e9):
            notes.append(
                f"stopped before {rate:,.0f} req/s: the next step would pass --max-requests "
                f"({settings.max_requests:,}) or --max-seconds ({settings.max_seconds:g})"
            )
            return None
        budget.requests += len(offsets)
        progress(f"{rate:,.0f} req/s for {offsets[-1] / 1e9:.1f} s ({len(offsets):,} queries)")
        step = run_step(target, settings.endpoint, requests, offsets, settings=settings, target_rate=rate)
        steps.append(step)
        progress(f"  -> {step.verdict}")
        return step

    if settings.rates:
        for rate in settings.rates:
            if measure(rate) is None:
                break
        return steps, notes
    _search(measure, settings, notes)
    return steps, notes


def _search(measure: Callable[[float], Step | None], settings: LoadSettings, notes: list[str]) -> None:
    """Double while steps pass, then bisect between the last pass and the first failure, to
    `resolution`. An invalid step (the client fell behind its schedule) says nothing about the
    server: it is measured once more, and if the client falls behind again above a passing rate,
    that rate becomes an upper bound like a failure, so the search narrows below it instead of
    stopping; the notes say the client, sharing the cores, was the limit there. Below the first
    valid step there is nothing to narrow towards: a twice-invalid rate whose every request was
    answered within the bound moves the search up (nothing is reported for it; on a mostly idle
    VM the client wakes late: send lag p99 1.2-1.5 ms at 100-400 req/s, 0.2-0.6 ms above), and
    any other stops the search (the machine is too busy to measure)."""
    search = _Bisection(settings)
    rate, retried = settings.start_rate, False
    for _ in range(settings.max_steps):
        step = measure(rate)
        if step is None:
            return
        if not step.valid and not retried:
            retried = True
            continue
        retried = False
        if not step.valid:
            if search.low is None and search.high is None and _kept_up(step, settings) \
                    and rate < settings.max_rate:
                skipped, rate = rate, min(rate * 2, settings.max_rate)
                notes.append(
                    f"{skipped:,.0f} req/s: the client fell behind twice (send lag p99 "
                    f"{step.send_lag_p99_ms:.2f} ms) while the server answered every request within "
                    f"the bound; no result at this rate, the search goes on at {rate:,.0f}"
                )
                continue
            if search.low is None:  # nothing valid below it to narrow towards
                notes.append(_busy_note(step, rate))
                return
            notes.append(_client_note(step, rate))
            search.client_limit = rate
        rate = search.next(rate, step.valid and step.passed, notes, step.verdict)
        if rate is None:
            search.conclude(notes)
            return
    notes.append(f"stopped after --max-steps {settings.max_steps}")
    search.conclude(notes)


def _busy_note(step: Step, rate: float) -> str:
    load = step.load_avg_1m[-1] if step.load_avg_1m else float("nan")
    return (
        f"stopped: the client could not keep its schedule at {rate:,.0f} req/s twice (send lag p99 "
        f"{step.send_lag_p99_ms:.1f} ms, load average {load:.1f}) and no lower rate was valid; this machine "
        "is too busy for a valid measurement now: rerun when it is quieter"
    )


def _client_note(step: Step, rate: float) -> str:
    load = step.load_avg_1m[-1] if step.load_avg_1m else float("nan")
    return (
        f"{rate:,.0f} req/s: the client could not keep its schedule twice (send lag p99 "
        f"{step.send_lag_p99_ms:.2f} ms, load average {load:.1f}); the load generator, sharing the "
        "cores with the server, was the limit there, so the search narrows below it"
    )


@dataclass
class _Bisection:
    """The passing and failing bounds of a search (a failure may be the client's, `client_limit`)."""

    settings: LoadSettings
    low: float | None = None
    high: float | None = None
    client_limit: float | None = None

    def next(self, rate: float, passed: bool, notes: list[str], verdict: str) -> float | None:
        """The next rate to measure, or None when the search is done."""
        settings = self.settings
        if passed:
            self.low = rate
        else:
            self.high = rate
        if self.high is None:
            if rate >= settings.max_rate:
                notes.append(f"reached --max-rate {settings.max_rate:,.0f} req/s with every step passing")
                return None
            return min(rate * 2, settings.max_rate)
        if self.low is None:
            if rate / 2 < settings.start_rate / 16:
                notes.append(f"stopped: even {rate:,.0f} req/s failed ({verdict})")
                return None
            return rate / 2
        if self.high / self.low <= settings.resolution:
            return None
        return math.sqrt(self.low * self.high)

    def conclude(self, notes: list[str]) -> None:
        if self.low is not None and self.client_limit is not None and self.high == self.client_limit:
            notes.append(
                f"the best rate, {self.low:,.0f} req/s, is the client's limit, not the server's: at "
                f"{self.high:,.0f} req/s the load generator, sharing this machine's cores with the "
                "server, could not keep its schedule (the server may go higher; a client on another "
                "machine, --allow-remote, would show it)"
            )


def _kept_up(step: Step, settings: LoadSettings) -> bool:
    """Every request of the step answered successfully, with p99 within the bound."""
    return not step.errors and step.p99_ms is not None and step.p99_ms <= settings.bound()


def warm_up(target: Target, requests: list[bytes], settings: LoadSettings) -> None:
    """Not recorded: first calls allocate runtime buffers and fill caches."""
    if settings.warmup_seconds <= 0:
        return
    rate = settings.rates[0] if settings.rates else settings.start_rate
    offsets = poisson_offsets(rate, settings.warmup_seconds, 1, np.random.default_rng(settings.seed + 1))
    run_engine(target, requests, offsets, timeout_s=settings.timeout_s, connections=8)


def run(settings: LoadSettings, progress: Progress = lambda _: None, *, data_dir=None) -> LoadtestResult:
    """The whole load test: validate, warm up, run the scenario, summarise (not written)."""
    if settings.scenario not in SCENARIOS:
        raise UsageError(f"unknown --scenario {settings.scenario!r}; valid: {', '.join(SCENARIOS)}")
    if settings.endpoint not in ENDPOINTS:
        raise UsageError(f"unknown --endpoint {settings.endpoint!r}; valid: {', '.join(ENDPOINTS)}")
    if settings.upload not in UPLOADS:
        raise UsageError(f"unknown --upload {settings.upload!r}; valid: {', '.join(UPLOADS)}")
    settings.check()
    target = parse_target(settings.url, allow_remote=settings.allow_remote)
    server = get_model(target)
    if settings.endpoint == "similar" and not server.get("recommender"):
        why = server.get("recommender_off") or "it was started with --no-similar"
        raise UsageError(
            f"the server at {target.base_url} runs without the recommender ({why.rstrip('.')}); use "
            "--endpoint classify or ceiling"
        )
    path = ENDPOINTS[settings.endpoint] + (f"?k={settings.k}" if settings.endpoint == "similar" else "")
    requests = encode_requests(target, path, png_uploads(settings.images, data_dir), settings.upload)
    warm_up(target, requests, settings)
    notes: list[str] = []
    if settings.scenario == "server":
        steps, notes = server_scenario(target, path, requests, settings, progress)
        summary = _server_summary(steps, settings)
    else:
        closed = settings.scenario == "single-stream"
        progress(f"{settings.queries:,} queries, " + ("one at a time" if closed else "all due at once"))
        offsets = np.zeros(settings.queries, np.int64)
        step = run_step(
            target,
            settings.endpoint,
            requests,
            offsets,
            settings=settings,
            target_rate=None,
            closed_loop=closed,
            connections=1 if closed else settings.queries,
        )
        steps = [step]
        summary = (
            {"p90_ms": step.p90_ms, "p50_ms": step.p50_ms}
            if closed
            else {"throughput": step.achieved_rate, "errors": step.queries - step.ok}
        )
    return LoadtestResult(
        scenario=settings.scenario,
        endpoint=settings.endpoint,
        url=target.base_url,
        upload=settings.upload,
        p99_bound_ms=settings.bound() if settings.scenario == "server" else None,
        steps=steps,
        summary=summary,
        server=server,
        machine=machine(target),
        settings=_settings_dict(settings, path),
        label=settings.label,
        notes=notes,
    )


def _server_summary(steps: list[Step], settings: LoadSettings) -> dict[str, Any]:
    passing = [s for s in steps if s.passed]
    best = max(passing, key=lambda s: s.target_rate) if passing else None
    return {
        "best_rate": best.target_rate if best else None,
        "best_achieved_rate": best.achieved_rate if best else None,
        "best_p99_ms": best.p99_ms if best else None,
        "best_meets_minimum": best.meets_minimum if best else None,
        "invalid_steps": sum(not s.valid for s in steps),
        "curve": [[s.target_rate, s.p99_ms, s.passed] for s in sorted(steps, key=lambda s: s.target_rate)],
    }


def _settings_dict(settings: LoadSettings, path: str) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(settings)
    out["path"] = path
    out["max_send_lag_ms"] = MAX_SEND_LAG_MS
    out["arrivals"] = (
        "Poisson (exponential gaps), seeded" if settings.scenario == "server" else settings.scenario
    )
    return out
