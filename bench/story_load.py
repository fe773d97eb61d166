"""The story benchmark's load: an open-loop generator that offers a rate schedule and counts,
second by second, what was offered and what came back.

Debian's wrk is closed-loop, and wrk2's ``-R`` (a fixed rate) is not packaged, so this is ours,
in the manner of bench/http/openloop.py: request k is due at its scheduled time whatever the
server does, and its latency runs from then (no coordinated omission). Unlike that one it opens
connections as callers arrive, up to `max_connections` (each caller of a real service brings
its own), and gives up on a request `timeout` seconds after it was due, as callers do.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import cast

import orjson

from bench.http.openloop import take_response

__all__ = ["Load", "Second", "offer"]

_TICK_S = 0.001


@dataclass(slots=True)
class Second:
    """What happened in one second of the run, by when it happened."""

    offered: int = 0  # requests due in this second
    answered: int = 0  # 2xx answers received in this second
    latencies: list[float] = field(default_factory=list)  # of every answer, in seconds
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass(slots=True)
class Load:
    """The whole run: per-second figures, and what the front door said it accepted."""

    start: float  # wall clock of the first due time
    seconds: list[Second]
    accepted: list[str]  # task ids of the 202s (Spillway), or "order:N" of the 200s (sync)
    ended: float = 0.0  # wall clock when the last request was answered or given up


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.due = 0.0  # perf_counter time the request in flight was due; 0: none
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it

    def send(self, due: float) -> None:
        self.due = due
        if self.transport is not None:
            self.transport.write(self.gen.next_request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answer = take_response(self.buffer)
        if answer is None:
            return
        status, body, self.buffer = answer
        due, self.due = self.due, 0.0
        self.gen.answered(self, due, status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.gen.lost(self)


class _Generator:
    def __init__(
        self, host: str, port: int, bodies: list[bytes], max_connections: int, timeout: float
    ) -> None:
        self.host, self.port = host, port
        self.requests = [
            (
                f"POST /process HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
            for body in bodies
        ]
        self.sent = 0
        self.max_connections = max_connections
        self.timeout = timeout
        self.offset = time.time() - time.perf_counter()
        self.origin = 0.0  # perf_counter time of second 0
        self.conns: set[_Conn] = set()
        self.opening = 0
        self.idle: collections.deque[_Conn] = collections.deque()
        self.waiting: collections.deque[float] = collections.deque()
        self.seconds: list[Second] = []
        self.accepted: list[str] = []
        self.outstanding = 0  # requests due and not yet answered or given up

    def next_request(self) -> bytes:
        self.sent += 1
        return self.requests[self.sent % len(self.requests)]

    def second(self, when: float) -> Second:
        index = max(0, int(when - self.origin))
        while len(self.seconds) <= index:
            self.seconds.append(Second())
        return self.seconds[index]

    def submit(self, due: float) -> None:
        self.second(due).offered += 1
        self.outstanding += 1
        if self.idle:
            self.idle.popleft().send(due)
            return
        self.waiting.append(due)
        if len(self.conns) + self.opening < self.max_connections:
            self.opening += 1
            asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError as error:
            kind = "refused" if isinstance(error, ConnectionRefusedError) else "connect-error"
            if self.waiting:  # the caller it was opened for gets the error
                self._fail(self.waiting.popleft(), kind)
            return
        finally:
            self.opening -= 1
        self.conns.add(conn)
        self._ready(conn)

    def _ready(self, conn: _Conn) -> None:
        if self.waiting:
            conn.send(self.waiting.popleft())
        else:
            self.idle.append(conn)

    def _fail(self, due: float, kind: str) -> None:
        self.second(time.perf_counter()).errors[kind] += 1
        self.outstanding -= 1

    def answered(self, conn: _Conn, due: float, status: int, body: bytes) -> None:
        now = time.perf_counter()
        second = self.second(now)
        second.latencies.append(now - due)
        self.outstanding -= 1
        if 200 <= status < 300:
            second.answered += 1
            answer = orjson.loads(body)
            self.accepted.append(answer.get("task_id") or f"order:{answer.get('order_id')}")
        elif status == 503 and b"pool-timeout" in body:
            second.errors["pool-timeout"] += 1
        elif status in (429, 503):
            second.errors[f"{status} refused"] += 1
        else:
            second.errors[f"{status}" if status < 500 else "5xx"] += 1
        self._ready(conn)

    def lost(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if conn.due:
            self._fail(conn.due, "reset")

    def expire(self) -> None:
        """Give up on requests `timeout` seconds past due, as their callers would."""
        limit = time.perf_counter() - self.timeout
        while self.waiting and self.waiting[0] < limit:
            self._fail(self.waiting.popleft(), "client-timeout")
        for conn in list(self.conns):
            if conn.due and conn.due < limit and conn.transport is not None:
                self._fail(conn.due, "client-timeout")
                conn.due = 0.0  # counted: its connection_lost must not count it again
                conn.transport.abort()


async def offer(
    host: str,
    port: int,
    bodies: list[bytes],
    schedule: list[tuple[float, float]],
    *,
    max_connections: int = 1000,
    timeout: float = 10.0,
) -> Load:
    """POST /process at each (rate, seconds) of `schedule` in turn; returns once every request
    is answered or given up on."""
    gen = _Generator(host, port, bodies, max_connections, timeout)
    gen.origin = start = time.perf_counter() + 0.05
    offsets, at = [], 0.0
    for rate, seconds in schedule:  # every due time, as offsets from start
        offsets += [at + k / rate for k in range(int(rate * seconds))]
        at += seconds
    sent, last_expiry = 0, 0.0
    while sent < len(offsets) or gen.outstanding:
        now = time.perf_counter()
        while sent < len(offsets) and start + offsets[sent] <= now:
            gen.submit(start + offsets[sent])
            sent += 1
        if now - last_expiry > 0.1:
            gen.expire()
            last_expiry = now
        await asyncio.sleep(_TICK_S)
    conns = list(gen.conns)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.gather(*(c.closed for c in conns))
    return Load(start + gen.offset, gen.seconds, gen.accepted, time.time())
