"""The load generator's engine: requests sent at scheduled times over keep-alive HTTP/1.1
connections, whatever the server does (open loop), with every time taken on one monotonic clock.

Why not an HTTP client library: the generator must not be the bottleneck, and it has to send
at sub-millisecond precision on a machine whose other core runs the server. So requests are
encoded once (by httpx, before the clock starts), written as bytes, and responses are parsed
by httptools (the parser uvicorn itself uses). Send times come from a Linux timerfd, which
wakes the event loop at the scheduled nanosecond; the event loop's own timers have only
millisecond resolution, which would put up to 1 ms of lag on every request.

Per request it records the scheduled time, the moment its bytes were written (send lag = the
difference: the client's own delay), and when the response completed (latency is measured from
the scheduled time, so a client that falls behind cannot hide server delay). Nothing caps the
requests in flight: a due request with no idle connection opens a new one. Errors and timeouts
are recorded as such, never as fast responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Outcome codes besides an HTTP status (which are >= 100).
PENDING, TIMEOUT, CONNECT_ERROR, CONNECTION_LOST, BAD_RESPONSE = 0, -1, -2, -3, -4
ERROR_NAMES = {
    TIMEOUT: "timeout",
    CONNECT_ERROR: "connect_error",
    CONNECTION_LOST: "connection_lost",
    BAD_RESPONSE: "bad_response",
    PENDING: "not_sent",
}


@dataclass
class Outcomes:
    """Per-request times (ns on time.monotonic_ns) and results of one run."""

    scheduled: np.ndarray  # int64
    sent: np.ndarray  # int64, 0 = never sent
    done: np.ndarray  # int64, 0 = no complete response
    status: np.ndarray  # int32: HTTP status, or one of the negative codes above
    connections_opened: int = 0

    @classmethod
    def empty(cls, scheduled: np.ndarray) -> Outcomes:
        n = len(scheduled)
        return cls(
            scheduled.astype(np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int32)
        )


# ---------------------------------------------------------------- a nanosecond timer


class _Timerfd:
    """CLOCK_MONOTONIC timerfd (os.timerfd_* on Python >= 3.13, libc through ctypes before)."""

    def __init__(self) -> None:
        if hasattr(os, "timerfd_create"):
            self.fd = os.timerfd_create(time.CLOCK_MONOTONIC, flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC)
            self._arm = lambda ns: os.timerfd_settime_ns(self.fd, flags=os.TFD_TIMER_ABSTIME, initial=ns)
            return
        libc = ctypes.CDLL(None, use_errno=True)

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

        self.fd = libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        settime = libc.timerfd_settime

        def arm(ns: int) -> None:
            spec = Itimerspec(Timespec(0, 0), Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
            if settime(self.fd, 1, ctypes.byref(spec), None) != 0:  # 1 = TFD_TIMER_ABSTIME
                raise OSError(ctypes.get_errno(), "timerfd_settime failed")

        self._arm = arm

    def arm(self, at_ns: int) -> None:
        self._arm(max(int(at_ns), 1))

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a spurious wake-up: nothing to read
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------- one connection


class _Connection(asyncio.Protocol):
    def __init__(self, engine: _Engine) -> None:
        import httptools

        self.engine = engine
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.current = -1  # index of the request in flight, -1 when idle
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:  # httptools.HttpParserError and friends: a broken response
            self.engine.finish(self, BAD_RESPONSE, keep=False)

    def on_body(self, body: bytes) -> None:
        self.body.extend(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        ok = bool(self.body) or status != 200
        self.engine.finish(self, status if ok else BAD_RESPONSE, keep=self.parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.current >= 0:
            self.engine.finish(self, CONNECTION_LOST, keep=False)
        self.engine.forget(self)


# ---------------------------------------------------------------- the engine


class _Engine:
    def __init__(
        self,
        host: str,
        port: int,
        requests: Sequence[bytes],
        outcomes: Outcomes,
        timeout_ns: int,
        closed_loop: bool,
    ) -> None:
        self.host, self.port = host, port
        self.requests = requests
        self.out = outcomes
        self.timeout_ns = timeout_ns
        self.closed_loop = closed_loop
        self.loop = asyncio.get_running_loop()
        self.idle: deque[_Connection] = deque()
        self.all: set[_Connection] = set()
        self.next = 0  # next request to send
        self.finished = 0
        self.all_done = self.loop.create_future()
        self.timer = _Timerfd()

    async def open(self, count: int) -> None:
        """Open `count` idle connections before the clock starts."""
        results = await asyncio.gather(*(self._connect() for _ in range(count)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed and len(failed) == len(results):
            raise ConnectionError(f"cannot connect to {self.host}:{self.port} ({failed[0]})")
        self.idle.extend(r for r in results if isinstance(r, _Connection))

    async def _connect(self) -> _Connection:
        _, conn = await self.loop.create_connection(lambda: _Connection(self), self.host, self.port)
        self.all.add(conn)
        self.out.connections_opened += 1
        return conn

    def forget(self, conn: _Connection) -> None:
        self.all.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def write(self, conn: _Connection, index: int) -> None:
        conn.current = index
        conn.body.clear()
        conn.transport.write(self.requests[index % len(self.requests)])
        self.out.sent[index] = time.monotonic_ns()

    def send(self, index: int) -> None:
        while self.idle:
            conn = self.idle.pop()  # most recently used first: its socket is warm
            if conn.transport is not None and not conn.transport.is_closing():
                self.write(conn, index)
                return
        self.loop.create_task(self._send_on_new(index))

    async def _send_on_new(self, index: int) -> None:
        try:
            conn = await self._connect()
        except OSError:
            self.out.sent[index] = time.monotonic_ns()
            self.record(index, CONNECT_ERROR)
            return
        self.write(conn, index)

    def finish(self, conn: _Connection, status: int, keep: bool) -> None:
        index, conn.current = conn.current, -1
        if index < 0:
            return
        self.out.done[index] = time.monotonic_ns()
        self.record(index, status)
        if keep and conn.transport is not None:
            self.idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()
        if self.closed_loop:
            self.advance()

    def advance(self) -> None:
        """Closed loop: the next request is due now (its latency counts from here)."""
        if self.next < len(self.out.scheduled):
            self.out.scheduled[self.next] = time.monotonic_ns()
            self.next += 1
            self.send(self.next - 1)

    def record(self, index: int, status: int) -> None:
        if self.out.status[index] == PENDING:
            self.out.status[index] = status
            self.finished += 1
            if self.finished == len(self.out.scheduled) and not self.all_done.done():
                self.all_done.set_result(None)

    # ------------------------------------------------------------ open loop

    def on_tick(self) -> None:
        self.timer.clear()
        scheduled, n = self.out.scheduled, len(self.out.scheduled)
        while self.next < n:
            now = time.monotonic_ns()
            if scheduled[self.next] > now:
                self.timer.arm(scheduled[self.next])
                if scheduled[self.next] > time.monotonic_ns():
                    return
                continue  # became due while arming: send it now
            self.send(self.next)
            self.next += 1

    def expire(self) -> None:
        """Every 20 ms: requests past their deadline are timeouts; their connections are dropped."""
        now = time.monotonic_ns()
        for conn in list(self.all):
            i = conn.current
            if i >= 0 and now - self.out.scheduled[i] > self.timeout_ns:
                self.record(i, TIMEOUT)
                conn.current = -1
                if conn.transport is not None:
                    conn.transport.abort()
        if not self.all_done.done():
            self.loop.call_later(0.02, self.expire)

    def close(self) -> None:
        for conn in list(self.all):
            if conn.transport is not None:
                conn.transport.abort()
        self.timer.close()


async def run(
    host: str,
    port: int,
    requests: Sequence[bytes],
    offsets_ns: np.ndarray,
    *,
    timeout_s: float,
    connections: int,
    closed_loop: bool = False,
) -> Outcomes:
    """Send request i (requests[i % len]) at start + offsets_ns[i]. In closed loop, one at a time:
    each is due when the previous one completes (offsets only give the count)."""
    outcomes = Outcomes.empty(np.zeros(len(offsets_ns), np.int64))
    engine = _Engine(host, port, requests, outcomes, int(timeout_s * 1e9), closed_loop)
    try:
        await engine.open(max(1, connections))
        start = time.monotonic_ns() + 20_000_000  # 20 ms to settle after the connections opened
        if closed_loop:
            await asyncio.sleep(0.02)
            engine.advance()
            budget = len(offsets_ns) * timeout_s + 1.0
        else:
            outcomes.scheduled[:] = start + np.asarray(offsets_ns, np.int64)
            engine.loop.add_reader(engine.timer.fd, engine.on_tick)
            engine.timer.arm(int(outcomes.scheduled[0]))
            budget = (int(outcomes.scheduled[-1]) - time.monotonic_ns()) / 1e9 + timeout_s + 1.0
        engine.expire()
        # Past the budget, requests never sent stay "not_sent" and those sent become timeouts.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(engine.all_done), timeout=max(budget, 0.1))
        unfinished = (outcomes.status == PENDING) & (outcomes.sent > 0)
        outcomes.status[unfinished] = TIMEOUT
    finally:
        if not closed_loop:
            engine.loop.remove_reader(engine.timer.fd)
        engine.close()
    return outcomes
