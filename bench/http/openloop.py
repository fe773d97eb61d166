"""An open-loop HTTP load generator: POST at a fixed rate, whatever the server's speed.

wrk is closed-loop (each connection sends its next request when the last one is answered), so
it measures capacity, not the latency a caller sees at a given load. Here request k is due at
``start + k / rate``; it goes out on an idle keep-alive connection, or waits for one, and its
latency runs from when it was *due*, so a slow server cannot hide its queueing delay
(no coordinated omission). Plain asyncio protocols with prebuilt request bytes keep the
generator's own cost at a few microseconds per request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import orjson

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["Answer", "offer", "take_response"]

_TICK_S = 0.001  # requests due within the same millisecond go out together


@dataclass(frozen=True, slots=True)
class Answer:
    """One request: when it was due (wall clock, seconds), how long the answer took, what came."""

    due: float
    seconds: float
    status: int
    task_id: str | None


def take_response(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """The first whole HTTP/1.1 response in `buffer` (Content-Length framed): its status, its
    body and what follows it; None until it has all arrived."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end].decode("latin-1").split("\r\n")
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    if len(buffer) < end + 4 + length:
        return None
    status = int(head[0].split(" ", 2)[1])
    return status, buffer[end + 4 : end + 4 + length], buffer[end + 4 + length :]


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None  # set by connection_made
        self.buffer = b""
        self.due = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, due: float, request: bytes) -> None:
        self.due = due
        if self.transport is not None:
            self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answer = take_response(self.buffer)
        if answer is None:
            return
        status, body, self.buffer = answer
        task_id = orjson.loads(body).get("task_id") if 200 <= status < 300 else None
        self.pool.answered(self, status, task_id)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.pool.lost(self)


class _Pool:
    def __init__(self, request: bytes, clock_offset: float) -> None:
        self.request = request
        self.offset = clock_offset  # wall clock minus perf_counter
        self.idle: collections.deque[_Connection] = collections.deque()
        self.waiting: collections.deque[float] = collections.deque()
        self.answers: list[Answer] = []
        self.errors = 0
        self.closing = False
        self.expected = 0
        self.all_answered = asyncio.Event()

    def _count(self) -> None:
        if len(self.answers) + self.errors >= self.expected:
            self.all_answered.set()

    def submit(self, due: float) -> None:
        if self.idle:
            self.idle.popleft().send(due, self.request)
        else:
            self.waiting.append(due)

    def answered(self, conn: _Connection, status: int, task_id: str | None) -> None:
        now = time.perf_counter()
        self.answers.append(Answer(conn.due + self.offset, now - conn.due, status, task_id))
        self._count()
        if self.waiting:
            conn.send(self.waiting.popleft(), self.request)
        else:
            self.idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        if not self.closing:
            self.errors += 1
            self._count()
        if conn in self.idle:
            self.idle.remove(conn)


def _collector_off(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run `fn` with the generator's cyclic collector off: with every answer kept, each full
    collection paused the generator for tens of ms, and the requests due meanwhile were counted
    late (docs/benchmarks.md, section "Overload")."""

    @functools.wraps(fn)
    async def off(*args: P.args, **kwargs: P.kwargs) -> R:
        gc.disable()
        try:
            return await fn(*args, **kwargs)
        finally:
            gc.enable()

    return off


@_collector_off
async def offer(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    rate: float,
    seconds: float,
    connections: int = 64,
    drain_timeout: float = 30.0,
) -> tuple[list[Answer], int]:
    """POST `body` to `path` at `rate` requests/s for `seconds`; the answers and socket errors.

    Returns once every request is answered (or `drain_timeout` passes after the last is due).
    """
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    pool = _Pool(request, time.time() - time.perf_counter())
    conns: list[_Connection] = []
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: _Connection(pool), host, port)
        conns.append(conn)
        pool.idle.append(conn)
    total = pool.expected = int(rate * seconds)
    start = time.perf_counter() + 0.01
    sent = 0
    while sent < total:
        now = time.perf_counter()
        due_now = min(total, int((now - start) * rate) + 1) if now >= start else 0
        while sent < due_now:
            pool.submit(start + sent / rate)
            sent += 1
        await asyncio.sleep(_TICK_S)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pool.all_answered.wait(), drain_timeout)
    pool.closing = True
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.gather(*(c.closed for c in conns))
    return pool.answers, pool.errors
