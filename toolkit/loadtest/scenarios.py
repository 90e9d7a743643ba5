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

import ipaddress
import math
import os
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from toolkit.errors import UsageError
from toolkit.loadtest import client
from toolkit.loadtest.record import LoadtestResult, Step

SCENARIOS = ("server", "single-stream", "offline")
ENDPOINTS = {"classify": "/v1/classify", "similar": "/v1/similar", "ceiling": "/v1/ceiling"}
DEFAULT_P99_MS = {"classify": 10.0, "similar": 25.0, "ceiling": 10.0}
UPLOADS = ("multipart", "raw")
MAX_SEND_LAG_MS = 1.0
MIN_STEP_SECONDS = 10.0
MIN_QUERIES = 662  # MLPerf Inference: enough queries for a 99th percentile at 99% confidence
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    base_url: str

    def url(self, path: str) -> str:
        return self.base_url + path


@dataclass(frozen=True)
class LoadSettings:
    url: str = "http://127.0.0.1:8000"
    endpoint: str = "classify"
    scenario: str = "server"
    p99_ms: float | None = None  # default: DEFAULT_P99_MS[endpoint]
    step_seconds: float = MIN_STEP_SECONDS
    min_queries: int = MIN_QUERIES
    rates: tuple[float, ...] = ()  # fixed rates instead of a search
    start_rate: float = 100.0
    max_rate: float = 20_000.0
    resolution: float = 1.1  # stop bisecting when the failing rate / passing rate <= this
    max_steps: int = 14
    queries: int = 1024  # single-stream and offline
    timeout_s: float = 2.0
    upload: str = "multipart"
    images: int = 256  # distinct real test images, sent round-robin
    k: int = 5
    seed: int = 0
    max_requests: int = 400_000  # the whole command
    max_seconds: float = 900.0  # the whole command
    warmup_seconds: float = 1.0
    allow_remote: bool = False
    label: str = ""

    def bound(self) -> float:
        return self.p99_ms if self.p99_ms is not None else DEFAULT_P99_MS[self.endpoint]


def parse_target(url: str, *, allow_remote: bool = False) -> Target:
    """Only http://HOST:PORT with HOST on loopback, unless the user explicitly allows another."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(f"--url {url!r}: expected http://HOST:PORT (plain HTTP, e.g. http://127.0.0.1:8000)")
    if parts.path not in ("", "/") or parts.query:
        raise UsageError(f"--url {url!r}: give only the server's address; --endpoint picks the route")
    host, port = parts.hostname, parts.port or 80
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except socket.gaierror as exc:
        raise UsageError(f"--url {url!r}: cannot resolve {host} ({exc.strerror})") from None
    remote = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if remote and not allow_remote:
        raise UsageError(
            f"--url {url!r} resolves to {', '.join(remote)}, which is not loopback; a load test "
            "targets this machine only unless you pass --allow-remote for an address you run"
        )
    literal = host if len(addresses) != 1 else next(iter(addresses))
    return Target(literal, port, f"http://{'[' + host + ']' if ':' in host else host}:{port}")


# ---------------------------------------------------------------- requests


def png_uploads(count: int, data_dir=None) -> list[bytes]:
    """The first `count` real Fashion-MNIST test images, each encoded as a PNG file."""
    import io

    from PIL import Image

    from toolkit import data

    images = data.load(data_dir).x_test[:count]
    out = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels, "L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def encode_requests(target: Target, path: str, pngs: list[bytes], upload: str) -> list[bytes]:
    """Each upload as the exact bytes of one HTTP/1.1 request, encoded once by httpx."""
    import httpx

    out = []
    for i, png in enumerate(pngs):
        if upload == "multipart":
            request = httpx.Request(
                "POST", target.url(path), files={"image": (f"test-{i}.png", png, "image/png")}
            )
        else:
            request = httpx.Request(
                "POST", target.url(path), content=png, headers={"Content-Type": "image/png"}
            )
        body = request.read()
        head = [f"POST {request.url.raw_path.decode()} HTTP/1.1"]
        head += [
            f"{name.decode()}: {value.decode()}"
            for name, value in request.headers.raw
            if name.lower() not in (b"connection",)
        ]
        head.append("Connection: keep-alive")
        out.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return out


# ---------------------------------------------------------------- server-side readings


def scrape(target: Target, endpoint: str) -> dict[str, Any]:
    """Batch-size bucket counts and the server's CPU seconds from its /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(target.url("/metrics"), timeout=5.0, follow_redirects=False).text
    except httpx.HTTPError:
        return {}
    buckets: dict[float, float] = {}
    cpu = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "toolkit_serve_batch_size_bucket" and sample.labels.get("endpoint") == endpoint:
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "process_cpu_seconds_total":
                cpu = sample.value
    return {"buckets": buckets, "cpu": cpu}


def batch_histogram(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Runtime calls per batch size during a step, from two cumulative histograms."""
    b0, b1 = before.get("buckets", {}), after.get("buckets", {})
    edges = sorted(e for e in b1 if math.isfinite(e))
    out, below = {}, 0.0
    for edge in edges:
        cumulative = b1[edge] - b0.get(edge, 0.0)
        if cumulative - below > 0:
            out[str(int(edge))] = int(round(cumulative - below))
        below = cumulative
    over = b1.get(math.inf, 0.0) - b0.get(math.inf, 0.0) - below
    if over > 0:
        out[f">{int(edges[-1]) if edges else 0}"] = int(round(over))
    return out


def get_model(target: Target) -> dict[str, Any]:
    import httpx

    try:
        response = httpx.get(target.url("/v1/model"), timeout=5.0, follow_redirects=False)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise UsageError(
            f"no toolkit server answers at {target.base_url} ({exc}); start one with "
            "`toolkit serve --exp NAME` or correct --url"
        ) from None


# ---------------------------------------------------------------- one step


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
    out = _run_engine(
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


def _run_engine(target: Target, requests, offsets_ns, **kwargs) -> client.Outcomes:
    coro = client.run(target.host, target.port, requests, offsets_ns, **kwargs)
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


def poisson_offsets(rate: float, seconds: float, min_queries: int, rng: np.random.Generator) -> np.ndarray:
    """Arrival offsets (ns from the step's start) of a Poisson process at `rate`, lasting at least
    `seconds` and `min_queries` arrivals."""
    n = max(min_queries, math.ceil(rate * seconds))
    gaps = rng.exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    offsets = np.cumsum(gaps)
    while offsets[-1] < seconds:  # a short draw: extend until the step lasts long enough
        more = np.cumsum(rng.exponential(1.0 / rate, size=max(16, n // 10))) + offsets[-1]
        offsets = np.concatenate([offsets, more])
    return (offsets * 1e9).astype(np.int64)


# ---------------------------------------------------------------- scenarios


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
        offsets = poisson_offsets(rate, settings.step_seconds, settings.min_queries, rng)
        if not budget.allows(len(offsets), offsets[-1] / 1e9):
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
    """Double while steps pass, then bisect. An invalid step (the client fell behind) says nothing
    about the server: it is measured once more, and if the client falls behind again the search
    stops rather than mistake the client for the server. One exception: below the first valid
    step, a twice-invalid rate whose every request was answered within the bound moves the search
    up to the next rate (nothing is reported for it). On a mostly idle VM the client wakes late
    (send lag p99 1.2-1.5 ms at 100-400 req/s, 0.2-0.6 ms above), which otherwise ends a search
    at its first rate."""
    low, high, rate, retried = None, None, settings.start_rate, False
    floor = settings.start_rate / 16
    for _ in range(settings.max_steps):
        step = measure(rate)
        if step is None:
            return
        if not step.valid:
            if not retried:
                retried = True
                continue
            if low is None and high is None and _kept_up(step, settings) and rate < settings.max_rate:
                retried, skipped, rate = False, rate, min(rate * 2, settings.max_rate)
                notes.append(
                    f"{skipped:,.0f} req/s: the client fell behind twice (send lag p99 "
                    f"{step.send_lag_p99_ms:.2f} ms) while the server answered every request within "
                    f"the bound; no result at this rate, the search goes on at {rate:,.0f}"
                )
                continue
            load = step.load_avg_1m[-1] if step.load_avg_1m else float("nan")
            notes.append(
                f"stopped: the client could not keep its schedule at {rate:,.0f} req/s twice (send lag p99 "
                f"{step.send_lag_p99_ms:.1f} ms, load average {load:.1f}); this machine is too busy for a "
                "valid measurement now: rerun when it is quieter"
            )
            return
        retried = False
        low, high = (rate, high) if step.passed else (low, rate)
        if high is None:
            if rate >= settings.max_rate:
                notes.append(f"reached --max-rate {settings.max_rate:,.0f} req/s with every step passing")
                return
            rate = min(rate * 2, settings.max_rate)
        elif low is None:
            if rate / 2 < floor:
                notes.append(f"stopped: even {rate:,.0f} req/s failed ({step.verdict})")
                return
            rate = rate / 2
        elif high / low <= settings.resolution:
            return
        else:
            rate = math.sqrt(low * high)
    notes.append(f"stopped after --max-steps {settings.max_steps}")


def _kept_up(step: Step, settings: LoadSettings) -> bool:
    """Every request of the step answered successfully, with p99 within the bound."""
    return not step.errors and step.p99_ms is not None and step.p99_ms <= settings.bound()


def warm_up(target: Target, requests: list[bytes], settings: LoadSettings) -> None:
    """Not recorded: first calls allocate runtime buffers and fill caches."""
    if settings.warmup_seconds <= 0:
        return
    rate = settings.rates[0] if settings.rates else settings.start_rate
    offsets = poisson_offsets(rate, settings.warmup_seconds, 1, np.random.default_rng(settings.seed + 1))
    _run_engine(target, requests, offsets, timeout_s=settings.timeout_s, connections=8)


def run(settings: LoadSettings, progress: Progress = lambda _: None, *, data_dir=None) -> LoadtestResult:
    """The whole load test: validate, warm up, run the scenario, summarise (not written)."""
    if settings.scenario not in SCENARIOS:
        raise UsageError(f"unknown --scenario {settings.scenario!r}; valid: {', '.join(SCENARIOS)}")
    if settings.endpoint not in ENDPOINTS:
        raise UsageError(f"unknown --endpoint {settings.endpoint!r}; valid: {', '.join(ENDPOINTS)}")
    if settings.upload not in UPLOADS:
        raise UsageError(f"unknown --upload {settings.upload!r}; valid: {', '.join(UPLOADS)}")
    target = parse_target(settings.url, allow_remote=settings.allow_remote)
    server = get_model(target)
    if settings.endpoint == "similar" and not server.get("recommender"):
        raise UsageError(
            f"the server at {target.base_url} runs without the recommender; use --endpoint "
            "classify or ceiling, or restart it without --no-similar"
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


def machine(target: Target) -> dict[str, Any]:
    from toolkit.benchmark.peaks import cpu_model
    from toolkit.runtimes import cpu_count

    cores = cpu_count()
    local = ipaddress.ip_address(target.host.split("%")[0]).is_loopback if _is_ip(target.host) else True
    shared = (
        (
            f"client and server share this machine's {cores} cores (loopback): every figure includes "
            "the client's own CPU use"
        )
        if local
        else "client and server run on different machines"
    )
    return {"cpu": cpu_model(), "cores": cores, "shared": shared, "hostname": socket.gethostname()}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True
