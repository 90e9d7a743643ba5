"""One load level: Poisson send times, the engine's outcomes summarised into a Step (latency from
each request's scheduled time, the client's send lag, what the server's /metrics says it did),
and the wait for the server to go idle before the next level."""

from __future__ import annotations

import math
import os
import resource
import time
from typing import Any

import numpy as np

from toolkit.core.loadtest_record import Step
from toolkit.loadtest import client
from toolkit.loadtest.settings import MAX_SEND_LAG_MS, MIN_STEP_SECONDS, LoadSettings, step_queries
from toolkit.loadtest.target import Target, batch_histogram, scrape


def _percentile(values: np.ndarray, q: float) -> float | None:
    if len(values) == 0:
        return None
    value = float(np.percentile(values, q, method="inverted_cdf"))
    return None if not math.isfinite(value) else value


def summarize(
    out: client.Outcomes, *, target_rate: float | None, bound_ms: float | None, min_queries: int
) -> Step:
    """Latency (failures as infinite), send lag, errors and the verdict of one step. The send-lag
    rule applies to scheduled arrivals (target_rate given); closed-loop and all-at-once runs
    report their lag without it."""
    ok = (out.status >= 200) & (out.status < 300)
    latency = np.where(ok, (out.done - out.scheduled) / 1e6, np.inf)
    sent = out.sent > 0
    lag = (out.sent[sent] - out.scheduled[sent]) / 1e6 if sent.any() else np.zeros(1)
    errors: dict[str, int] = {}
    for code in np.unique(out.status[~ok]):
        name = client.ERROR_NAMES.get(int(code), str(int(code)))
        errors[name] = int((out.status == code).sum())
    first = int(out.scheduled.min())
    last_done = int(out.done[ok].max()) if ok.any() else first
    span = max(int(out.scheduled.max()) - first, 1) / 1e9
    wall = max(last_done - first, 1) / 1e9
    step = Step(
        target_rate=target_rate,
        seconds=round(span if target_rate else wall, 3),
        queries=len(out.status),
        ok=int(ok.sum()),
        errors=errors,
        achieved_rate=round(ok.sum() / wall, 2),
        p50_ms=_percentile(latency, 50),
        p90_ms=_percentile(latency, 90),
        p99_ms=_percentile(latency, 99),
        max_ms=None if not ok.all() else float(latency.max()),
        send_lag_p50_ms=float(np.percentile(lag, 50)),
        send_lag_p99_ms=float(np.percentile(lag, 99)),
        send_lag_max_ms=float(lag.max()),
        valid=target_rate is None or bool(np.percentile(lag, 99) <= MAX_SEND_LAG_MS),
        meets_minimum=bool(span >= MIN_STEP_SECONDS and len(out.status) >= min_queries),
        passed=False,
        verdict="",
        connections=out.connections_opened,
    )
    step.passed, step.verdict = _verdict(step, bound_ms)
    return step


def _verdict(step: Step, bound_ms: float | None) -> tuple[bool, str]:
    if not step.valid:
        return False, (
            f"invalid: the client's send lag p99 was {step.send_lag_p99_ms:.2f} ms (> {MAX_SEND_LAG_MS:g} "
            "ms), so this step measured the client, not the server"
        )
    failed = step.queries - step.ok
    if failed:
        kinds = ", ".join(f"{n} {k}" for k, n in step.errors.items())
        return False, f"failed: {failed} of {step.queries} requests did not succeed ({kinds})"
    if bound_ms is not None and (step.p99_ms is None or step.p99_ms > bound_ms):
        return False, f"p99 {step.p99_ms:.2f} ms is over the {bound_ms:g} ms bound"
    if bound_ms is None:
        return True, "completed"
    return True, f"p99 {step.p99_ms:.2f} ms within the {bound_ms:g} ms bound"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


IDLE_CPU_PCT = 15.0  # a server below this share of a core has nothing left from the last step
IDLE_WINDOW_S = 0.5
IDLE_MAX_WAIT_S = 30.0


def wait_until_idle(target: Target, endpoint: str) -> dict[str, Any]:
    """The server's /metrics reading (as `scrape`) once its CPU stayed below IDLE_CPU_PCT over a
    window, or after IDLE_MAX_WAIT_S. A step that overloaded the server leaves a backlog of
    requests whose clients gave up; measured here, the step after an overloaded /v1/ceiling step
    inherited it (load average 1.2 at 100 req/s) and was invalid. A server without /metrics is
    not waited for."""
    started = time.monotonic()
    reading = scrape(target, endpoint)
    while reading.get("cpu") is not None and time.monotonic() - started < IDLE_MAX_WAIT_S:
        time.sleep(IDLE_WINDOW_S)
        previous, reading = reading, scrape(target, endpoint)
        if reading.get("cpu") is None:
            break
        if 100 * (reading["cpu"] - previous["cpu"]) / IDLE_WINDOW_S < IDLE_CPU_PCT:
            break
    return reading


def run_step(
    target: Target,
    endpoint: str,
    requests: list[bytes],
    offsets_ns: np.ndarray,
    *,
    settings: LoadSettings,
    target_rate: float | None,
    closed_loop: bool = False,
    connections: int | None = None,
) -> Step:
    before, load0, cpu0, wall0 = (
        wait_until_idle(target, endpoint),
        os.getloadavg()[0],
        _cpu_seconds(),
        time.monotonic(),
    )
    if connections is None:
        # Enough for the expected concurrency at twice the bound; more open on demand (no cap).
        connections = min(2048, 8 + int((target_rate or 1) * 2 * settings.bound() / 1000))
    out = run_engine(
        target,
        requests,
        offsets_ns,
        timeout_s=settings.timeout_s,
        connections=connections,
        closed_loop=closed_loop,
    )
    cpu1, wall1 = _cpu_seconds(), time.monotonic()
    after, load1 = scrape(target, endpoint), os.getloadavg()[0]
    step = summarize(
        out,
        target_rate=target_rate,
        bound_ms=settings.bound() if target_rate else None,
        min_queries=settings.min_queries,
    )
    step.batch_sizes = batch_histogram(before, after)
    calls = sum(step.batch_sizes.values())
    step.mean_batch = round(_images(step.batch_sizes) / calls, 2) if calls else None
    step.client_cpu_pct = round(100 * (cpu1 - cpu0) / max(wall1 - wall0, 1e-9), 1)
    if before.get("cpu") is not None and after.get("cpu") is not None:
        step.server_cpu_pct = round(100 * (after["cpu"] - before["cpu"]) / max(wall1 - wall0, 1e-9), 1)
    step.load_avg_1m = [round(load0, 2), round(load1, 2)]
    return step


def _images(histogram: dict[str, int]) -> int:
    return sum(int(size.lstrip(">")) * calls for size, calls in histogram.items())


def run_engine(target: Target, requests, offsets_ns, **kwargs) -> client.Outcomes:
    coro = client.run(target.host, target.port, requests, offsets_ns, **kwargs)
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


def poisson_offsets(rate: float, seconds: float, min_queries: int, rng: np.random.Generator) -> np.ndarray:
    """Arrival offsets (ns from the step's start) of a Poisson process at `rate`, lasting at least
    `seconds` and `min_queries` arrivals. Callers check `step_queries` against their budget first."""
    n = int(step_queries(rate, seconds, min_queries))
    gaps = rng.exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    offsets = np.cumsum(gaps)
    while offsets[-1] < seconds:  # a short draw: extend until the step lasts long enough
        more = np.cumsum(rng.exponential(1.0 / rate, size=max(16, n // 10))) + offsets[-1]
        offsets = np.concatenate([offsets, more])
    return (offsets * 1e9).astype(np.int64)


# ---------------------------------------------------------------- scenarios
