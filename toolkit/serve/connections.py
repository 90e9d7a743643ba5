"""Connections that never finish a request cannot lock others out: uvicorn's HTTP protocol with a
read timeout for partial requests and a bound on open connections.

uvicorn closes an idle keep-alive connection (`timeout_keep_alive`), but a connection that sends
part of its headers, or part of its body, and waits is held forever, and enough of them use up
the process's file descriptors: the listening socket's accept then fails and /healthz and every
new client are refused (issue 24: 22,000 such connections). uvicorn's `limit_concurrency` does not
help: it counts those connections too and answers every new request, /healthz included, with 503.

So each connection here has a deadline while it owes the server a request: `header_timeout`
seconds from the moment it opened or its previous response ended until its request (headers and
body) has arrived. Past it, a connection with part of a request gets a JSON 408 and is closed;
one that sent nothing is closed (a request whose body stalled sees a disconnect, so its handler
ends). And at most `max_connections` are open: a new one beyond it closes the connection that has
waited longest without a whole request (the way nginx reuses idle keep-alive connections when it
runs out); only when every open connection has a whole request in flight is the new one refused
with a JSON 503. A request that has arrived whole is never closed by either rule.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toolkit.core.errors import UsageError

# Descriptors kept for everything but client sockets: the listening socket, the event loop's own,
# model and log files, /proc reads for the process metrics, the decode worker's pipes.
RESERVED_FDS = 256
UNLIMITED_FDS = 1 << 20  # what "unlimited" descriptors count as (Linux's default nr_open)
SWEEP_S = 0.25  # at most this late past a deadline (a quarter of the timeout when that is shorter)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    max_connections: int | None = None  # None: what the file-descriptor limit allows

    def __post_init__(self) -> None:
        if not 0 < self.header_timeout_s < math.inf:
            raise UsageError(
                f"--header-timeout must be a number of seconds above 0, got {self.header_timeout_s:g}"
            )
        if self.max_connections is not None and self.max_connections < 1:
            raise UsageError(f"--max-connections must be at least 1, got {self.max_connections}")

    def resolved(self) -> ConnectionLimits:
        """With max_connections set: the soft RLIMIT_NOFILE raised to the hard limit (as servers
        do at start-up), less RESERVED_FDS; a larger explicit value is refused (exit 2)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        if soft == resource.RLIM_INFINITY:
            soft = UNLIMITED_FDS
        room = max(1, soft - RESERVED_FDS)
        if self.max_connections is None:
            return ConnectionLimits(self.header_timeout_s, room)
        if self.max_connections > room:
            raise UsageError(
                f"--max-connections {self.max_connections:,} is more than this process may open "
                f"({soft:,} file descriptors, {RESERVED_FDS} kept for the server itself): use at "
                f"most {room:,}, or raise the limit (ulimit -n) first"
            )
        return self

    def describe(self) -> dict[str, Any]:
        return {"header_timeout_s": self.header_timeout_s, "max_connections": self.max_connections}


class ConnectionGuard:
    """The shared state: how many connections are open, and those owing a request, longest-waiting
    first. One sweep a few times per timeout closes those past their deadline: a deadline check
    costs nothing per request beyond moving the connection in this ordered dict."""

    def __init__(self, limits: ConnectionLimits, on_close: Callable[[str], None] | None = None) -> None:
        self.limits = limits
        self.open = 0
        self.waiting: OrderedDict[GuardedProtocol, float] = OrderedDict()
        self.on_close = on_close or (lambda _reason: None)
        self._sweeping = False

    def admit(self, conn: GuardedProtocol) -> bool:
        """Count a new connection in; at the bound, close the longest-waiting one to make room,
        or refuse this one (False) when every open connection has a whole request in flight."""
        if not self._sweeping:
            self._sweeping = True
            self._sweep(conn.loop)
        if self.open >= self.limits.max_connections:
            if not self.waiting:
                self.on_close("refused")
                return False
            oldest, _ = self.waiting.popitem(last=False)
            self.on_close("evicted")
            oldest.drop()
        self.open += 1
        return True

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        timeout = self.limits.header_timeout_s
        now = loop.time()
        while self.waiting:
            conn, since = next(iter(self.waiting.items()))
            if now - since < timeout:
                break
            del self.waiting[conn]
            self.on_close("timed_out")
            conn.expire()
        loop.call_later(min(SWEEP_S, timeout / 4), self._sweep, loop)


def protocol_class(limits: ConnectionLimits, on_close: Callable[[str], None] | None = None
                   ) -> tuple[type[asyncio.Protocol], ConnectionGuard]:
    """uvicorn's httptools protocol with the deadline and the bound above (a class for
    `uvicorn.Config(http=...)`), bound to one guard. uvicorn is imported here, not with this module:
    `toolkit serve` names the missing serving packages itself (server.require_serving)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    guard = ConnectionGuard(limits.resolved(), on_close)
    return type("GuardedHttpToolsProtocol", (GuardedProtocol, HttpToolsProtocol), {"guard": guard}), guard


class GuardedProtocol:
    """The deadline and the bound, as a mixin over uvicorn's HttpToolsProtocol (protocol_class)."""

    guard: ConnectionGuard
    loop: asyncio.AbstractEventLoop
    transport: Any
    cycle: Any
    pipeline: Any

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self._counted = self._partial = False
        super().connection_made(transport)
        if not self.guard.admit(self):
            _answer(transport, 503, "too_many_connections",
                    "every connection this server allows has a request in flight; retry shortly")
            return
        self._counted = True
        self._wait()

    def data_received(self, data: bytes) -> None:
        self._partial = True
        super().data_received(data)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._partial = False
        if self.cycle is not None and self.cycle.response_complete:
            self._wait()  # answered before its body had arrived (a 413): it owes the next request
        else:
            self.guard.waiting.pop(self, None)  # whole: no deadline while it is answered

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._wait()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def _wait(self) -> None:
        self.guard.waiting.pop(self, None)  # to the end: the dict stays ordered by waiting time
        self.guard.waiting[self] = self.loop.time()

    def _release(self) -> None:
        self.guard.waiting.pop(self, None)
        if self._counted:
            self._counted = False
            self.guard.open -= 1

    def expire(self) -> None:
        """Past the deadline (the guard has taken it off its waiting list)."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # its handler waits for the body: it sees a disconnect and ends
        elif self._partial:
            _answer(self.transport, 408, "request_timeout",
                    f"the request did not arrive whole within {self.guard.limits.header_timeout_s:g} s "
                    "(--header-timeout); send the headers and body without pausing")
        else:
            self.transport.close()

    def drop(self) -> None:
        """Closed to make room for a new connection (it owed a request; none had arrived whole)."""
        self._release()
        self.transport.close()


def _answer(transport: Any, status: int, kind: str, message: str) -> None:
    """A JSON error written straight to the socket (no request to answer through the app), then close."""
    reason = {408: "Request Timeout", 503: "Service Unavailable"}[status]
    body = json.dumps({"error": {"status": status, "type": kind, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    if not transport.is_closing():
        transport.write(head + body)
        transport.close()
