"""What a load test is asked to do (LoadSettings) and the constants every part of it shares."""

from __future__ import annotations

import math
from dataclasses import dataclass

from toolkit.core.errors import UsageError

SCENARIOS = ("server", "single-stream", "offline")
ENDPOINTS = {"classify": "/v1/classify", "similar": "/v1/similar", "ceiling": "/v1/ceiling"}
DEFAULT_P99_MS = {"classify": 10.0, "similar": 25.0, "ceiling": 10.0}
UPLOADS = ("multipart", "raw")
MAX_SEND_LAG_MS = 1.0
MIN_STEP_SECONDS = 10.0
MIN_QUERIES = 662  # MLPerf Inference: enough queries for a 99th percentile at 99% confidence


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

    def check(self) -> None:
        """Every number finite and in range, and every fixed rate's step within --max-requests,
        before anything is allocated or sent (UsageError, exit 2)."""
        for flag, value in (("--start-rate", self.start_rate), ("--max-rate", self.max_rate),
                            ("--duration", self.step_seconds), ("--timeout", self.timeout_s),
                            ("--max-seconds", self.max_seconds), ("--p99-ms", self.p99_ms)):
            if value is not None and not 0 < value < math.inf:
                raise UsageError(f"{flag} {value:g}: expected a finite number above 0")
        for rate in self.rates:
            if not 0 < rate < math.inf:
                raise UsageError(f"--rates: {rate:g} is not a rate; expected finite numbers above 0 "
                                 "(requests per second), e.g. 250,500,1000")
            queries = step_queries(rate, self.step_seconds, self.min_queries)
            if queries > self.max_requests:
                raise UsageError(
                    f"--rates: {rate:,.6g} req/s for {self.step_seconds:g} s is {queries:,.0f} requests, "
                    f"more than --max-requests {self.max_requests:,}; lower the rate or --duration, or "
                    "raise --max-requests"
                )


def step_queries(rate: float, seconds: float, min_queries: int) -> float:
    """How many arrivals one step schedules (a float: it may be far beyond any array's size)."""
    return max(float(min_queries), math.ceil(rate * seconds))
