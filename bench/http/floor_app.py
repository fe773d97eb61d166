"""The floor of the HTTP accept benchmark: the ceiling's server plus the least durable write.

For the benchmark's analysis only. The ceiling answers 202 with no work, but any design that
promises a durable 202 must wait for Redis first; this app pays that wait and nothing else, so
the distance from the ceiling to it is what writing before answering costs on this machine,
whatever the design, and the distance from it to Spillway is what Spillway's own work costs.

Everything but ``POST`` is the ceiling's (`bench.http.ceiling_app`); a ``POST`` reads the whole
body, awaits ``XADD floor * d <body>`` and sends the ceiling's 202 (a 500 if the write failed).
The client is deliberately the cheapest there is: one raw asyncio connection per process, the
commands of all the requests that arrive in one event-loop turn packed by hiredis's C encoder
into one write, and the replies, parsed by a hiredis Reader, resolving the requests in order.
No parsing, no validation, no idempotency or backlog check, no retry: not a way to queue tasks.
Redis is ``FLOOR_REDIS_URL`` (``redis://host:port/db``).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import urlsplit

import hiredis

from bench.http.ceiling_app import _ACCEPTED, _BODY, Message
from bench.http.ceiling_app import app as ceiling

STREAM = "floor"


def _pack(*args: str | bytes) -> bytes:
    """One command in RESP (hiredis's C encoder; its stub types a command as a 1-tuple)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


class _Redis(asyncio.Protocol):
    """One connection to Redis: `xadd` queues a write, one flush per loop turn sends them all."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.queued: list[tuple[bytes, asyncio.Future[Any]]] = []
        self.sent: deque[asyncio.Future[Any]] = deque()  # awaiting a reply, in order

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's does not subclass asyncio.Transport, so no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def xadd(self, body: bytes) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        self.queued.append((body, future))
        if len(self.queued) == 1:  # the first of this turn: the others join its flush
            self.loop.call_soon(self.flush)
        return future

    def flush(self) -> None:
        batch, self.queued = self.queued, []
        if self.transport is None or self.transport.is_closing():
            for _, future in batch:
                if not future.done():
                    future.set_exception(ConnectionError("the connection to Redis is closed"))
            return
        self.sent.extend(future for _, future in batch)
        self.transport.write(b"".join(_pack("XADD", STREAM, "*", "d", body) for body, _ in batch))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.sent.popleft()
            if future.done():  # its request was cancelled (the client went away)
                continue
            if isinstance(reply, hiredis.ReplyError):  # returned, not raised, by the Reader
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        global _redis
        if _redis is self:
            _redis = None  # the next request connects again
        self.transport = None
        for future in [*self.sent, *(future for _, future in self.queued)]:
            if not future.done():
                future.set_exception(ConnectionError(f"the connection to Redis was lost: {exc}"))
        self.sent.clear()
        self.queued.clear()


_redis: _Redis | None = None
_connecting = asyncio.Lock()  # binds to the worker's loop on first use (Python >= 3.10)


async def _connection() -> _Redis:
    """This process's connection, opened by the first request (once, however many arrive)."""
    global _redis
    if _redis is not None:
        return _redis
    async with _connecting:
        if _redis is None:
            url = urlsplit(os.environ["FLOOR_REDIS_URL"])
            loop = asyncio.get_running_loop()
            _, redis = await loop.create_connection(
                _Redis, url.hostname or "127.0.0.1", url.port or 6379
            )
            if db := url.path.strip("/"):  # the benchmark checks the stream in this database
                assert redis.transport is not None  # noqa: S101 - connection_made has run
                selected = redis.loop.create_future()
                redis.sent.append(selected)
                redis.transport.write(_pack("SELECT", db))
                await selected
            _redis = redis
        return _redis


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan" or scope["method"] != "POST":
        await ceiling(scope, receive, send)
        return
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body", False):
        message = await receive()
        body += message.get("body", b"")
    try:
        await (await _connection()).xadd(body)
    except (hiredis.ReplyError, OSError) as error:  # ConnectionError is an OSError
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": str(error).encode()})
        return
    await send({"type": "http.response.start", "status": 202, "headers": _ACCEPTED})
    await send({"type": "http.response.body", "body": _BODY})
