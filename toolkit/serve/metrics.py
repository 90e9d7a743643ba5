"""Prometheus metrics of the server, through the official client library (prometheus-client).

Each app gets its own CollectorRegistry (several apps in one test process never share counts).
Request counts and latencies are recorded by app.FrontDoor, a plain ASGI wrapper (Starlette's
BaseHTTPMiddleware costs far more per request); batch sizes by the batchers. The batch-size
histogram has one bucket per size up to max_batch, so `toolkit loadtest` reads the exact
distribution back from /metrics.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "toolkit_serve"
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.035,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# Routes get their own label; anything else (404s, probes) is "other", so a scan of random paths
# cannot grow the label set without bound.
ROUTES = {
    "/v1/classify": "classify",
    "/v1/similar": "similar",
    "/v1/ceiling": "ceiling",
    "/v1/model": "model",
    "/healthz": "healthz",
    "/metrics": "metrics",
    "/": "page",
}


class ServerMetrics:
    def __init__(self, *, max_batch: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # process_cpu_seconds_total: `toolkit loadtest` states the server's CPU use beside its own.
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests answered, by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_seconds",
            "Time from the request reaching the app to the end of its response.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Images per runtime call (one bucket per size up to max batch).",
            ["endpoint"],
            buckets=tuple(range(1, max_batch + 1)),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_seconds",
            "Seconds per runtime call.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.candidates = Histogram(
            f"{PREFIX}_similar_candidates",
            "Catalog items the exact search rescored per query (the rest were "
            "ruled out by their score bounds).",
            buckets=(10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000),
            registry=self.registry,
        )
        self.rejected = Counter(
            f"{PREFIX}_rejected",
            "Requests dropped before a runtime call, by reason "
            "(queue_full: answered 503; client_gone: client disconnected).",
            ["endpoint", "reason"],
            registry=self.registry,
        )
        self.queue = Gauge(
            f"{PREFIX}_queued_images",
            "Images waiting for a runtime call.",
            ["endpoint"],
            registry=self.registry,
        )
        self._connection_metrics()
        self.model = Info(
            f"{PREFIX}_model", "The export and embedding model being served.", registry=self.registry
        )

    def _connection_metrics(self) -> None:
        self.connections_closed = Counter(
            f"{PREFIX}_connections_closed",
            "Connections the server closed before a whole request arrived, by reason (timed_out: "
            "past --header-timeout; evicted: the longest-waiting one, to admit a new connection at "
            "--max-connections; refused: a new one, when every open connection had a request in flight).",
            ["reason"],
            registry=self.registry,
        )
        self.open_connections = Gauge(
            f"{PREFIX}_open_connections", "Client connections open now.", registry=self.registry
        )

    def batch_hook(self, endpoint: str):
        sizes, seconds = self.batch_size.labels(endpoint), self.batch_seconds.labels(endpoint)

        def record(rows: int, took: float) -> None:
            sizes.observe(rows)
            seconds.observe(took)

        return record

    def reject_hook(self, endpoint: str):
        return lambda reason: self.rejected.labels(endpoint, reason).inc()

    def connection_hook(self):
        children = {reason: self.connections_closed.labels(reason) for reason in ("timed_out", "evicted",
                                                                                  "refused")}
        return lambda reason: children[reason].inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
