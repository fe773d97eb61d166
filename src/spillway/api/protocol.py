"""`BoundedProtocol`: uvicorn's httptools protocol with the bounds a public front door needs.

uvicorn with httptools is the fastest server measured here (docs/benchmarks.md, "HTTP
accept"), but it leaves four things to the application that a surge must not be able to
exploit. This protocol bounds them per connection:

* **The size of a request head.** httptools gathers a header of any size in memory: 50
  requests with 8 MB headers grew a process by ~350 MB. A head past `ServerConfig.head_limit`
  bytes gets ``431`` and its connection is closed.
* **The time a request head may take.** A client sending its head a byte at a time held its
  connection for ever. A head that has not arrived `ServerConfig.head_timeout` seconds after
  its first byte (or after the connection opened) gets ``408`` and its connection is closed,
  within a quarter of the timeout (at most 1 s) after the deadline.
* **The time a connection may idle between requests** (uvicorn's keep-alive timeout, 5 s):
  kept by the same clock, to its tick, where uvicorn arms and cancels a timer for every
  answer (2.7 us a request under uvloop).
* **The pauses in a request body.** A client that stops sending its body, of any size, gets
  ``408`` once nothing has arrived for `ServerConfig.body_timeout` seconds (time the server
  itself held the body back by flow control does not count); the application then sees the
  client gone. (The application bounds the whole read of a body over 64 KiB itself.)
* **The close after a refused body.** uvicorn closes a connection as soon as an answer with
  ``Connection: close`` is sent; a client still sending its body then gets a reset in place of
  its ``413``. Here the connection reads on and drops what arrives (a lingering close) until
  the client closes or pauses for `LINGER_IDLE` seconds (to the clock's tick, below),
  `LINGER_BYTES` have been dropped,
  or the keep-alive timeout (5 s, to the clock's tick) has passed since the answer.

It also writes each answer's head and body to the socket in one call where uvicorn makes
two: one system call less per request, which answered 6 % more requests per second (A/B,
alternating wrk runs, 64 connections).
"""

from __future__ import annotations

import asyncio
import math
from http import HTTPStatus
from typing import Any, cast

import uvicorn

from spillway.api.direct import DirectProtocol
from spillway.api.problems import HTTPProblem, render

__all__ = ["LINGER_BYTES", "BoundedProtocol", "ServerConfig"]

#: The most a lingering close reads and drops before it closes anyway.
LINGER_BYTES = 64 << 20
#: A lingering close ends when the client has sent nothing for this many seconds.
LINGER_IDLE = 1.0


class ServerConfig(uvicorn.Config):
    """uvicorn's settings plus the bounds of `BoundedProtocol` (pickled to every process)."""

    def __init__(
        self,
        app: Any,
        *,
        head_limit: int,
        head_timeout: float,
        body_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, http=BoundedProtocol, **kwargs)
        self.head_limit = head_limit
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout


class _Transport:
    """The connection's transport as uvicorn sees it.

    A write is held until the next one or the end of the event loop's turn, so an answer's
    head and body leave in one system call. `close` lingers while the client is still
    sending a body that was refused.
    """

    def __init__(self, transport: asyncio.Transport, protocol: BoundedProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = protocol.loop
        self._held: bytes | None = None
        # What each request calls, bound once: as fast as calling the transport itself.
        self.is_closing = transport.is_closing
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def write_now(self, data: bytes) -> None:
        held = self._held
        self._held = None
        self._transport.write(held + data if held is not None else data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        if not self._protocol.start_lingering():
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Clock:
    """One per server process: ticks every `period` seconds and checks each connection's deadlines.
    A request only notes the tick its head began at, and the tick its body last moved; an
    answer, the tick its connection fell idle at."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connections: set[Any],
        head_timeout: float,
        body_timeout: float,
        keep_alive: float,
    ) -> None:
        self.loop = loop
        self.connections = connections
        self.period = min(1.0, head_timeout / 4, body_timeout / 4, keep_alive / 4)
        # A head, a pause in a body, or one while lingering may last this many whole ticks.
        self.head_ticks = math.ceil(head_timeout / self.period)
        self.idle_ticks = math.ceil(keep_alive / self.period)
        self.body_ticks = math.ceil(body_timeout / self.period)
        self.linger_ticks = math.ceil(LINGER_IDLE / self.period)
        self.tick = 0
        loop.call_later(self.period, self._run)

    def _run(self) -> None:
        self.tick += 1
        for connection in list(self.connections):
            if isinstance(connection, BoundedProtocol):
                connection.check_deadlines(self.tick)
        self.loop.call_later(self.period, self._run)


class BoundedProtocol(DirectProtocol):
    """HTTP/1.1 with a bounded request head (size and time) and a lingering close."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        bounds = cast(ServerConfig, config)  # the protocol of ServerConfig only
        self._head_limit = bounds.head_limit
        self._head_timeout = bounds.head_timeout
        self._body_timeout = bounds.body_timeout
        # One clock per server (in each of its processes), kept on its state.
        clock: _Clock | None = getattr(self.server_state, "spillway_clock", None)
        if clock is None or clock.loop is not self.loop:
            clock = _Clock(
                self.loop,
                self.connections,
                self._head_timeout,
                self._body_timeout,
                self.timeout_keep_alive,
            )
            self.server_state.spillway_clock = clock  # type: ignore[attr-defined]
        self._clock = clock
        self._in_head = True  # the next bytes belong to a request head
        self._head_bytes = 0
        self._head_since: int | None = None  # the tick the head under way began at
        self._in_body = False  # a request's body is under way
        self._idle_since: int | None = None  # the tick the last answer completed at, if idle
        self._body_seen = 0  # the tick its last bytes arrived at (also while lingering)
        self._lingering = False
        self._dropped = 0
        self._socket: asyncio.Transport  # the transport itself, whose close does not linger

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._socket = transport
        super().connection_made(_Transport(transport, self))  # type: ignore[arg-type]
        self._head_since = self._clock.tick

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_since = None
        super().connection_lost(exc)

    def eof_received(self) -> None:
        if self._lingering:
            self._close_now()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._dropped += len(data)
            self._body_seen = self._clock.tick
            if self._dropped > LINGER_BYTES:
                self._close_now()
            return
        self._idle_since = None
        if self._in_head:
            self._head_bytes += len(data)
        else:
            self._body_seen = self._clock.tick
        super().data_received(data)
        if self._in_head and self._head_bytes > self._head_limit:
            self._refuse(431, f"the request head is larger than {self._head_limit} bytes")

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:
            self._head_since = self._clock.tick

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_since = None
        self._in_body = True
        self._body_seen = self._clock.tick
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        self._in_body = False

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timeout noted for the clock instead of a timer armed.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_since = self._clock.tick

    def write_answer(self, data: bytes) -> None:
        cast(_Transport, self.transport).write_now(data)  # a whole answer: no need to hold it

    # The bounds

    def check_deadlines(self, tick: int) -> None:
        """Refuse the request under way if its head has taken too long, or its body has not
        moved for too long (while the server was reading it: a body held back by flow
        control, because the application is not reading yet, is not the client's pause)."""
        if self._socket.is_closing():
            return
        idle = self._idle_since
        if idle is not None and tick - idle > self._clock.idle_ticks:
            self._idle_since = None
            self.transport.close()  # a linger ends here too: its answer is `idle`'s
            return
        if self._lingering:
            if tick - self._body_seen > self._clock.linger_ticks:
                self._close_now()
            return
        since = self._head_since
        if since is not None and tick - since > self._clock.head_ticks:
            self._refuse(408, f"the request head did not arrive within {self._head_timeout:g} s")
            return
        if not self._in_body:
            return
        if self.flow.read_paused:
            self._body_seen = tick
        elif tick - self._body_seen > self._clock.body_ticks:
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                self._refuse(408, f"the request body stopped arriving for {self._body_timeout:g} s")

    def start_lingering(self) -> bool:
        """Called when uvicorn closes: true if the close is put off to linger, because an
        answer went out before its request's body was all received (false for the close
        that ends a linger)."""
        if self._lingering:
            return False  # the end of the linger: close for real
        cycle = self.cycle
        if (
            cycle is None
            or not cycle.response_complete
            or not cycle.more_body
            or self._socket.is_closing()
        ):
            return False
        self._lingering = True
        self._body_seen = self._clock.tick
        self.flow.resume_reading()
        return True

    def _close_now(self) -> None:
        self._lingering = False
        self._socket.close()

    def _refuse(self, status: int, detail: str) -> None:
        """Answer a request the application never saw with a problem document, and close."""
        self._head_since = None
        self._in_body = False
        slug = "request-timeout" if status == 408 else "request-header-too-large"
        _, headers, body = render(HTTPProblem(status, slug, detail))
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        lines.append(b"connection: close\r\n\r\n")
        self._socket.write(b"".join(lines) + body)
        self._lingering = False
        self._socket.close()
