"""Run the service on uvicorn (uvloop event loop, httptools HTTP parser).

Models load before the port is bound, so a missing or unproven export refuses to start (exit 4
or 5) without ever answering a request. Ctrl-C (or SIGTERM) stops accepting connections, lets
in-flight requests finish (up to `drain_seconds`), stops the batch workers and exits 130.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.core.errors import Interrupted, UsageError
from toolkit.serve.batching import BatchingSettings
from toolkit.serve.connections import ConnectionLimits
from toolkit.serve.uploads import Limits

SWITCH_INTERVAL_S = 0.0005
SERVING_MODULES = ("fastapi", "uvicorn", "httptools", "python_multipart", "prometheus_client", "httpx")


def require_serving() -> None:
    """One line naming the install command when the `serve` extra is missing."""
    missing = [m for m in SERVING_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(
            f"serving needs {', '.join(missing)}: pip install -e '.[serve]' (or, on a host "
            "without TensorFlow, pip install -r requirements-serve.txt)"
        )


@dataclass(frozen=True)
class ServeSettings:
    exp: str
    root: Path | None = None
    data_dir: Path | None = None
    format: str | None = None
    precision: str | None = None
    runtime: str | None = None  # None: the pick's runtime, else the format's default
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 1
    similar: bool = True
    catalog_limit: int | None = None
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    limits: Limits = field(default_factory=Limits)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    drain_seconds: float = 10.0


def build_state(settings: ServeSettings, progress: Callable[[str, int, int], None] | None = None):
    from toolkit.core.errors import ArtifactError
    from toolkit.serve.app import ServeState
    from toolkit.serve.loading import load_classifier, load_recommender, open_embedder
    from toolkit.specs import get_spec

    limit_blas_threads(settings.threads)
    spec = get_spec(settings.exp).name
    classifier = load_classifier(
        spec, settings.root, format=settings.format, precision=settings.precision, threads=settings.threads,
        runtime=settings.runtime,
    )
    recommender, similar_off = None, None
    if settings.similar:
        try:
            embedder = open_embedder(spec, settings.root, threads=settings.threads)
        except ArtifactError as exc:
            # The recommender is the optional half: without its embedding model (which `toolkit run`
            # does not build) the server classifies, and /v1/similar answers 503 with the fix.
            similar_off = f"similar items are off: {exc.message}, then restart the server"
        else:
            recommender = load_recommender(
                spec,
                settings.root,
                data_dir=settings.data_dir,
                threads=settings.threads,
                catalog_limit=settings.catalog_limit,
                progress=progress,
                embedder=embedder,
            )
    return ServeState(classifier, recommender, settings.batching, settings.limits, similar_off=similar_off)


def limit_blas_threads(threads: int) -> None:
    """numpy's BLAS (the catalog search) starts a thread per core that spins between calls; on a
    small machine those spinning threads take the cores the event loop, the other batch worker
    and a local load generator need. Measured here: a single-query search took 4.6 ms on one BLAS
    thread against 6.6 ms on two. Process-wide, like the runtimes' own `threads`."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def event_loop_name() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def http_parser_name() -> str:
    return "httptools"  # required (SERVING_MODULES): the connection guard extends its protocol


def check_bind(host: str, port: int) -> None:
    """Refuse, with one line, a port that is taken or an address this machine does not have."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port "
                "or stop what is using it"
            ) from None


def run(state, settings: ServeSettings, on_started: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C/SIGTERM; then drain and raise Interrupted (exit 130)."""
    import uvicorn

    from toolkit.serve.app import create_app
    from toolkit.serve.connections import protocol_class

    check_bind(settings.host, settings.port)
    protocol, guard = protocol_class(settings.connections, on_close=state.metrics.connection_hook())
    state.metrics.open_connections.set_function(lambda: guard.open)
    state.connection_limits = guard.limits.describe()
    state.large_images.start()
    # A batch worker whose runtime call has returned needs the GIL back to hand over its results;
    # under load the event loop holds it until the switch interval (5 ms by default) forces a
    # hand-over, which would add up to 5 ms to every batch. 0.5 ms bounds that wait.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    config = uvicorn.Config(
        create_app(state),
        host=settings.host,
        port=settings.port,
        loop=event_loop_name(),
        http=protocol,  # httptools, with the read timeout and the connection bound
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
        timeout_graceful_shutdown=settings.drain_seconds,
        server_header=False,
    )
    server = _signal_recording_server(config)
    if on_started is not None:
        _announce_when_started(server, on_started, f"http://{_url_host(settings.host)}:{settings.port}")
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the captured SIGINT after its graceful shutdown
        raise Interrupted(_stopped_by(signal.SIGINT)) from None
    if not server.started and server.stopped_by is None:
        raise UsageError(f"the server did not start on {settings.host}:{settings.port}; see the log above")
    # uvicorn returns normally when re-raising the signal does nothing: SIGINT is ignored in a
    # process started in the background by a shell, SIGTERM has no Python handler.
    raise Interrupted(_stopped_by(server.stopped_by))


def _signal_recording_server(config):
    """uvicorn's server, noting the first signal that stopped it (to say which, whatever happens
    when uvicorn re-raises it)."""
    import uvicorn

    class Server(uvicorn.Server):
        stopped_by: int | None = None

        def handle_exit(self, sig: int, frame) -> None:
            if self.stopped_by is None:
                self.stopped_by = sig
            super().handle_exit(sig, frame)

    return Server(config)


def _stopped_by(sig: int | None) -> str:
    names = {int(signal.SIGINT): "Ctrl-C", int(signal.SIGTERM): "SIGTERM"}
    name = names.get(sig, "a signal") if sig is not None else "a signal"
    return f"{name} (in-flight requests were drained first)"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _announce_when_started(server, on_started: Callable[[str], None], url: str) -> None:
    original = server.startup

    async def startup(sockets=None):
        await original(sockets=sockets)
        if server.started:
            on_started(url)
            sys.stdout.flush()

    server.startup = startup
