"""What a load test is asked to do (LoadSettings) and the constants every part of it shares."""

from __future__ import annotations

from dataclasses import dataclass

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
