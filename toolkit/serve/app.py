"""The HTTP service: FastAPI routes over the batchers, the page, health and metrics.

    POST /v1/classify   one image (multipart field or raw image body) or {"images": [28x28, ...]}
    POST /v1/similar    one image -> the k most similar catalog items (?thumbnails=true adds PNGs)
    POST /v1/ceiling    the same upload parsing, decoding and conversion, but no model: the
                        stack's own ceiling, against which `toolkit loadtest` states the served rate
    GET  /v1/model      what is loaded (export, parity, recommender, batching, limits)
    GET  /healthz       200 while serving
    GET  /metrics       Prometheus text format
    GET  /              the web page: drop a photo, see its class and similar catalog items

The three POST routes are the request path a load test drives. They take the raw Request and
parse it themselves (no pydantic models), and `FrontDoor` hands them their requests before
FastAPI's middleware stack and dependency resolution, which cost more than decoding the upload
(README: "Serving" has the measurements). FastAPI still documents them (/docs) and serves
everything else. Every error, FastAPI's own included, has one JSON shape:
{"error": {"status": 4xx, "type": "...", "message": "one line"}}.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from toolkit import CLASS_NAMES, __version__
from toolkit.serve.batching import BatchingSettings, ClientGone, DynamicBatcher, Overloaded
from toolkit.serve.loading import Classifier, Recommender
from toolkit.serve.metrics import ROUTES, ServerMetrics
from toolkit.serve.uploads import (
    HTTPProblem,
    LargeImages,
    Limits,
    decode_upload,
    image_bytes,
    json_images,
    media_type,
    read_body,
)

PAGE = Path(__file__).with_name("page.html")
JSON = "application/json"


@dataclass
class ServeState:
    """Everything the routes use, built once before the server binds its port."""

    classifier: Classifier
    recommender: Recommender | None
    batching: BatchingSettings
    limits: Limits = field(default_factory=Limits)
    # Why there is no recommender when one was asked for (its embedding model is missing, unreadable
    # or stale):
    # /v1/similar answers 503 with this; None with a recommender, or with --no-similar (404).
    similar_off: str | None = None
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(max_batch=self.batching.max_batch)
        self.large_images = LargeImages()  # large uploads decode in its worker process
        self.connection_limits: dict[str, Any] | None = None  # set by server.run
        self.classify = DynamicBatcher(
            "classify",
            lambda rows, _: self.classifier.run(rows),
            self.batching,
            on_batch=self.metrics.batch_hook("classify"),
            on_reject=self.metrics.reject_hook("classify"),
        )
        self.similar = None
        self.max_k = self.limits.max_k
        if self.recommender is not None:
            self.max_k = min(self.limits.max_k, len(self.recommender.labels))
            # One search per batch, at the largest k asked in it; each request keeps its first k.
            # Always on a worker thread: a search batch takes milliseconds, which on the event loop
            # would hold up every other request (measured: p99 29 ms inline against 27 ms at
            # 200 req/s); `inline` is for classify's sub-millisecond batches.
            self.similar = DynamicBatcher(
                "similar",
                self._search,
                replace(self.batching, inline=False),
                on_batch=self.metrics.batch_hook("similar"),
                on_reject=self.metrics.reject_hook("similar"),
            )
        for name, batcher in (("classify", self.classify), ("similar", self.similar)):
            if batcher is not None:
                self.metrics.queue.labels(name).set_function(lambda b=batcher: b.queued_rows)
        self.metrics.model.info({k: str(v) for k, v in self.classifier.identity.items() if k != "parity"})
        # In every answer: enough to know which file answered; /v1/model has the rest.
        self.identity = {
            k: self.classifier.identity[k] for k in ("spec", "key", "format", "precision", "sha256")
        }

    def _search(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        indices, scores, candidates = self.recommender.search(rows, k)
        for count in candidates:
            self.metrics.candidates.observe(count)
        return indices, scores

    def describe(self) -> dict[str, Any]:
        from toolkit.core.machine import package_versions

        rec = None
        if self.recommender is not None:
            rec = {"spec": self.recommender.spec, **self.recommender.info}
        return {
            "classifier": self.classifier.identity,
            "recommender": rec,
            "recommender_off": self.similar_off,
            "batching": {
                "max_batch": self.batching.max_batch,
                "max_wait_ms": self.batching.max_wait_ms,
                "max_queue": self.batching.max_queue,
                "inline": self.batching.inline,
            },
            "limits": {
                **self.limits.describe(),
                "max_k_similar": self.max_k,
                "max_k_classify": len(CLASS_NAMES),
                **(self.connection_limits or {}),
            },
            "started_at": self.started_at,
            "toolkit_version": __version__,
            "versions": package_versions(),
        }

    def close(self) -> None:
        for batcher in (self.classify, self.similar):
            if batcher is not None:
                batcher.close()
        self.large_images.close()


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")).encode(), status, headers, media_type=JSON)


def _problem(exc: HTTPProblem) -> Response:
    return Response(exc.body(), exc.status, exc.headers, media_type=JSON)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPProblem(
            422, f"bad_{name}", f"{name}={raw!r} is not an integer; use {low}..{high}"
        ) from None
    if not low <= value <= high:
        raise HTTPProblem(422, f"bad_{name}", f"{name}={value} is outside {low}..{high}")
    return value


def _bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("1", "true", "yes", "0", "false", "no"):
        raise HTTPProblem(422, f"bad_{name}", f"{name}={raw!r}: use true or false")
    return raw in ("1", "true", "yes")


async def _one_image(request: Request, state: ServeState) -> tuple[np.ndarray, list[str]]:
    body = await read_body(request.receive, request.headers, state.limits.max_body_bytes)
    if media_type(request.headers) == JSON:
        raise HTTPProblem(
            415,
            "unsupported_media_type",
            "this endpoint takes one image upload (multipart/form-data or image/png, image/jpeg), not JSON",
        )
    return await decode_upload(image_bytes(body, request.headers), state.limits, state.large_images)


def _top(probabilities: np.ndarray, k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": int(i), "class": CLASS_NAMES[i], "probability": float(probabilities[i])} for i in order]


@functools.lru_cache(maxsize=8192)
def _png_data_uri(pixels: bytes) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("L", (28, 28), pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


_UPLOAD_CONTENT = {
    "multipart/form-data": {
        "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}
    },
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
}
UPLOAD_DOC = {"requestBody": {"content": _UPLOAD_CONTENT}}
CLASSIFY_DOC = {
    "requestBody": {
        "content": {
            **_UPLOAD_CONTENT,
            JSON: {
                "schema": {
                    "type": "object",
                    "properties": {"images": {"type": "array"}, "range": {"enum": ["0-255", "0-1"]}},
                }
            },
        }
    }
}
log = logging.getLogger("uvicorn.error")


class Handlers:
    """The POST endpoints, shared by FastAPI (for /docs) and FrontDoor (for speed)."""

    def __init__(self, state: ServeState) -> None:
        self.state = state

    async def classify(self, request: Request) -> Response:
        """Top-k classes (?k=1..10, default 3) for one uploaded image or a JSON batch of 28x28 arrays."""
        state, limits = self.state, self.state.limits
        k = _int_param(request, "k", 3, 1, len(CLASS_NAMES))
        if media_type(request.headers) == JSON:
            body = await read_body(request.receive, request.headers, limits.max_body_bytes)
            pixels = json_images(body, limits)
            probs = await state.classify.submit(pixels, watch=request.receive)
            predictions = [{"class": top[0]["class"], "top": top} for top in (_top(p, k) for p in probs)]
            return _json({"model": state.identity, "predictions": predictions})
        pixels, notes = await _one_image(request, state)
        probs = await state.classify.submit(pixels[None], watch=request.receive)
        top = _top(probs[0], k)
        return _json({"model": state.identity, "class": top[0]["class"], "top": top, "conversions": notes})

    async def similar(self, request: Request) -> Response:
        """The k most similar catalog items (?k=1..max, default 5; ?thumbnails=true adds PNG data URIs)."""
        state = self.state
        if state.similar is None:
            if state.similar_off is not None:
                raise HTTPProblem(503, "no_recommender", state.similar_off)
            raise HTTPProblem(
                404, "no_recommender", "this server runs without the recommender (--no-similar)"
            )
        k = _int_param(request, "k", 5, 1, state.max_k)
        thumbnails = _bool_param(request, "thumbnails")
        pixels, notes = await _one_image(request, state)
        indices, scores = await state.similar.submit(pixels[None], need=k, watch=request.receive)
        rec = state.recommender
        items = []
        for rank, (i, score) in enumerate(
            zip(indices[0, :k].tolist(), scores[0, :k].tolist(), strict=True), 1
        ):
            label = int(rec.labels[i])
            item = {"rank": rank, "index": i, "label": label, "class": CLASS_NAMES[label], "score": score}
            if thumbnails:
                item["thumbnail"] = _png_data_uri(rec.images[i].tobytes())
            items.append(item)
        model = {
            "spec": rec.spec,
            "embedding_sha256": rec.info["embedding_sha256"],
            "catalog_items": rec.info["items"],
        }
        return _json({"model": model, "k": k, "similar": items, "conversions": notes})

    async def ceiling(self, request: Request) -> Response:
        """The upload path without a model: parse, decode, convert, answer. The stack's ceiling."""
        from toolkit.core.data import to_model_input

        pixels, notes = await _one_image(request, self.state)
        batch = to_model_input(pixels[None])
        return _json(
            {
                "model": None,
                "shape": list(batch.shape),
                "mean": round(float(batch.mean()), 6),
                "conversions": notes,
            }
        )

    def routes(self) -> dict[str, Any]:
        return {"/v1/classify": self.classify, "/v1/similar": self.similar, "/v1/ceiling": self.ceiling}


def error_response(exc: Exception) -> Response:
    """The JSON error for anything a handler raises (5xx for the unexpected, logged)."""
    if isinstance(exc, HTTPProblem):
        return _problem(exc)
    if isinstance(exc, Overloaded):
        return _problem(HTTPProblem(503, "overloaded", str(exc), {"Retry-After": "1"}))
    if isinstance(exc, ClientGone):
        return _problem(HTTPProblem(499, "client_gone", str(exc)))  # nobody reads it; counted in metrics
    log.error("unexpected error answering a request", exc_info=exc)
    return _problem(HTTPProblem(500, "internal_error", f"{type(exc).__name__}: {exc}"))


SHUTTING_DOWN = Response(
    HTTPProblem(503, "shutting_down", "the server stopped (Ctrl-C or SIGTERM) before this request finished "
                "within --drain-seconds; send it again").body(),
    503, {"Connection": "close", "Retry-After": "1"}, media_type=JSON,
)


class FrontDoor:
    """The outermost ASGI app: counts and times every response (Prometheus), and hands the POST
    endpoints their requests directly; everything else goes to FastAPI."""

    def __init__(self, app: Any, state: ServeState, handlers: Handlers) -> None:
        self.app = app
        self.metrics = state.metrics
        self.fast = handlers.routes()
        self._latency = {name: state.metrics.latency.labels(name) for name in (*ROUTES.values(), "other")}
        self._counts: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = ROUTES.get(scope["path"], "other")
        started = time.perf_counter()
        status, begun = [500], [False]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0], begun[0] = message["status"], True
            await send(message)

        handler = self.fast.get(scope["path"]) if scope["method"] == "POST" else None
        try:
            if handler is None:
                await self.app(scope, receive, send_status)
            else:
                try:
                    response = await handler(Request(scope, receive))
                except Exception as exc:
                    response = error_response(exc)
                await response(scope, receive, send_status)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when --drain-seconds is over; left to it,
            # each would log a traceback and answer a plain-text 500.
            task = asyncio.current_task()
            if hasattr(task, "uncancel"):  # Python >= 3.11 counts cancellations; 3.10 does not
                task.uncancel()
            if not begun[0]:
                await SHUTTING_DOWN(scope, receive, send_status)
        finally:
            self._latency[endpoint].observe(time.perf_counter() - started)
            self._count(endpoint, status[0]).inc()

    def _count(self, endpoint: str, status: int) -> Any:
        child = self._counts.get((endpoint, status))
        if child is None:
            child = self._counts[(endpoint, status)] = self.metrics.requests.labels(endpoint, str(status))
        return child


def create_app(state: ServeState) -> Any:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        state.close()  # after uvicorn has drained the in-flight requests

    app = FastAPI(
        title="fashion-mnist-toolkit serve",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.serve = state
    handlers = Handlers(state)
    _add_error_handlers(app)
    app.post("/v1/classify", openapi_extra=CLASSIFY_DOC)(handlers.classify)
    app.post("/v1/similar", openapi_extra=UPLOAD_DOC)(handlers.similar)
    app.post("/v1/ceiling", openapi_extra=UPLOAD_DOC)(handlers.ceiling)
    _add_get_routes(app, state)
    return FrontDoor(app, state, handlers)


def _add_error_handlers(app: FastAPI) -> None:
    for kind in (HTTPProblem, Overloaded, ClientGone):
        app.add_exception_handler(kind, lambda _, exc: error_response(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        message = {
            404: f"no route {request.method} {path}; see GET /docs",
            405: f"{request.method} is not allowed on {path}",
        }.get(exc.status_code, str(exc.detail))
        kind = "not_found" if exc.status_code == 404 else "http_error"
        return _problem(HTTPProblem(exc.status_code, kind, message, dict(exc.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _problem(HTTPProblem(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}"))


def _add_get_routes(app: FastAPI, state: ServeState) -> None:
    @app.get("/v1/model")
    async def model() -> Response:
        """What is loaded: the export (spec, format, precision, sha256, parity), recommender, limits."""
        return _json(state.describe())

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json(
            {
                "status": "ok",
                "model": state.classifier.choice.key,
                "recommender": state.recommender is not None,
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = state.metrics.exposition()
        return Response(body, media_type=content_type)

    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)
