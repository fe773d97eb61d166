"""`FastProtocol`: uvicorn's httptools protocol, extended: direct routes, request heads and
bodies bounded in size and time, a lingering close and one-write answers.

This is the only module that touches uvicorn's private names. It relies on
``uvicorn.protocols.http.httptools_impl``: the class `HttpToolsProtocol` (its constructor,
its connection and parser callbacks, ``on_response_complete`` and ``_start_asgi_task``), the
table ``STATUS_LINE``, and the attributes a protocol holds (``parser``, ``cycle``, ``flow``,
``pipeline``, ``server_state``, ``connections``, ``tasks``, ``timeout_keep_alive``,
``limit_concurrency``, ``root_path``, ``url``, ``headers``, ``scope``,
``expect_100_continue``...) and its request cycles hold (``response_started``,
``response_complete``, ``more_body``, ``keep_alive``...). `probe` checks each of them on the
installed uvicorn, by name and by building one protocol and serving one request with it;
`spillway.api.serve` uses this protocol only when the probe passes and
``SPILLWAY_FAST_PATH`` is on, and uvicorn's own ``http="httptools"`` otherwise. It is one
module, past the ~400 lines a module should keep to, because it is one fence around one
library: split, each half would reach into uvicorn's internals again.

What the fast protocol adds, per connection (none of it exists on the stock path):

* **Direct routes.** An application may have ``direct_route(scope)``, returning a handler
  (`DirectHandler`) for a request it can answer from its scope and its whole body, or None.
  The protocol asks only for a plain request: ``POST``, HTTP/1.1, kept alive, no
  ``Expect: 100-continue``, no upgrade, not pipelined behind an answer under way, a body
  declared by ``Content-Length`` of at most `DIRECT_BODY` bytes. It reads the body, calls
  ``handler(scope, body)`` and writes the ``(status, headers, body)`` it gets, with the
  server's default headers and the application's ``direct_headers`` (header lines, each
  ending in CRLF, the same on every answer: serialised once), in one write. The handler may
  return that answer, a future of it, or a coroutine, which runs as a task as an ASGI
  application does, so a graceful shutdown waits for it. It must answer every request itself
  and set ``content-length``; one that raises gets a 500 and its connection closed.
  Everything else goes through ASGI, whose cycle is most of what uvicorn costs per request
  (docs/benchmarks.md#what-the-fast-protocol-buys).
* **The size of a request head.** httptools gathers a header of any size in memory. A head
  of more than `ServerConfig.head_limit` bytes gets ``431`` and its connection is closed,
  however its bytes fall into reads (alone, with its body, behind a pipelined request). The
  limit counts the head as sent: every byte from the end of the previous request (or the
  start of the connection), so empty lines before the request line too, through the CRLF of
  the blank line that ends it. A head of exactly the limit is served.
* **The time a request head may take.** A head that has not arrived `ServerConfig.head_timeout`
  seconds after its first byte (or after the connection opened) gets ``408`` and its
  connection is closed, within a quarter of the timeout (at most 1 s) after the deadline.
* **The time a request body may take.** A body not all received `ServerConfig.body_timeout`
  seconds after its head (time the server itself held it back by flow control, while the
  application was not reading, does not count) gets ``408`` and its connection is closed,
  within a quarter of the timeout (at most 1 s) after the deadline, whatever its size and
  however steadily it trickles in. If the application has already answered, the connection
  is closed; an answer still under way is left to finish.
* **The close after a refused body.** uvicorn closes as soon as an answer with
  ``Connection: close`` is sent, so a client still sending its body gets a reset in place of
  its ``413``. Here the connection reads on and drops what arrives (a lingering close) until
  the client closes or pauses for `LINGER_IDLE` seconds, `LINGER_BYTES` have been dropped, or
  the keep-alive timeout has passed since the answer.
* **The keep-alive timeout** is kept by the same per-process clock, to its tick, where uvicorn
  arms and cancels a timer for every answer; and each answer's head and body leave in one
  system call where uvicorn makes two.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import httptools
import uvicorn

from spillway.api.problems import HTTPProblem, Rendered, render

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # `probe` reports it, and the stock protocol serves
    _IMPORT_ERROR = f"uvicorn.protocols.http.httptools_impl: {exc}"
    if not TYPE_CHECKING:
        HttpToolsProtocol = asyncio.Protocol
        STATUS_LINE = {}

__all__ = [
    "DIRECT_BODY",
    "LINGER_BYTES",
    "LINGER_IDLE",
    "DirectHandler",
    "FastProtocol",
    "ServerConfig",
    "probe",
]

log = logging.getLogger("spillway.api")

#: The largest body a direct route is given: larger ones go through ASGI, which streams them.
DIRECT_BODY = 64 * 1024
#: The most a lingering close reads and drops before it closes anyway.
LINGER_BYTES = 64 << 20
#: A lingering close ends when the client has sent nothing for this many seconds.
LINGER_IDLE = 1.0

Scope = MutableMapping[str, Any]
#: Given the request's scope and whole body: the answer, its future, or a coroutine of it.
DirectHandler = Callable[[Scope, bytes], Rendered | Awaitable[Rendered]]

_FAILED: Rendered = (
    500,
    [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
    b"Internal Server Error",
)


class ServerConfig(uvicorn.Config):
    """uvicorn's settings plus the bounds of `FastProtocol` (pickled to every process)."""

    def __init__(
        self,
        app: Any,
        *,
        head_limit: int,
        head_timeout: float,
        body_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, http=FastProtocol, **kwargs)
        self.head_limit = head_limit
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout


class _NoEvent:
    """uvicorn sets a cycle's message event when the client goes; a direct cycle has none."""

    @staticmethod
    def set() -> None:
        pass


_NO_EVENT = _NoEvent()


class _DirectCycle:
    """A request served by a direct route, with what uvicorn's callbacks read of a cycle."""

    __slots__ = (
        "body",
        "disconnected",
        "handler",
        "keep_alive",
        "more_body",
        "response_complete",
        "response_started",
        "scope",
    )
    message_event = _NO_EVENT

    def __init__(self, scope: Scope, handler: DirectHandler) -> None:
        self.scope = scope
        self.handler = handler
        self.body = bytearray()
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = True  # uvicorn's shutdown clears it to close after the answer


class _Transport:
    """The connection's transport as uvicorn sees it.

    A write is held until the next one or the end of the event loop's turn, so an answer's
    head and body leave in one system call. `close` lingers while the client is still
    sending a body that was refused.
    """

    def __init__(self, transport: asyncio.Transport, protocol: FastProtocol) -> None:
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
        # A head, a body, an idle connection or a pause while lingering may last this many
        # whole ticks.
        self.head_ticks = math.ceil(head_timeout / self.period)
        self.idle_ticks = math.ceil(keep_alive / self.period)
        self.body_ticks = math.ceil(body_timeout / self.period)
        self.linger_ticks = math.ceil(LINGER_IDLE / self.period)
        self.tick = 0
        loop.call_later(self.period, self._run)

    def _run(self) -> None:
        self.tick += 1
        for connection in list(self.connections):
            if isinstance(connection, FastProtocol):
                connection.check_deadlines(self.tick)
        self.loop.call_later(self.period, self._run)


class FastProtocol(HttpToolsProtocol):
    """HTTP/1.1 with direct routes, request heads and bodies bounded in size and time, and a
    lingering close (the module docstring says each)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        route = getattr(self.app, "direct_route", None)
        self._direct_route: Callable[[Scope], DirectHandler | None] | None = route
        self._direct_headers: bytes = getattr(self.app, "direct_headers", b"")
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
        self._head_bytes = 0  # of the head under way, as sent
        self._head_since: int | None = None  # the tick the head under way began at
        self._in_body = False  # a request's body is under way
        self._body_since = 0  # the tick its head ended at, moved on by ticks held back
        self._body_left = 0  # bytes of a Content-Length body not yet read; -1: chunked
        self._tail = b""  # the last bytes of the head or chunked body under way (<= 3)
        self._idle_since: int | None = None  # the tick the last answer completed at, if idle
        self._body_seen = 0  # the tick bytes last arrived at while lingering
        self._lingering = False
        self._dropped = 0
        self._refusal: tuple[int, str] | None = None  # of a head, sent after earlier answers
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
        if self._refusal is not None:
            return  # a head was refused: nothing after it is read
        self._idle_since = None
        # The parser is fed a piece at a time, cut where a head ends and where a body ends,
        # so the size of every head is known to the byte however the reads fall: one read
        # often holds a head with its body, or a head behind a pipelined request.
        while data:
            if self._in_head:
                room = self._head_limit - self._head_bytes
                end = _blank_line_end(self._tail, data)
                if end > room or (end < 0 and len(data) > room):
                    self._refuse(431, f"the request head is larger than {self._head_limit} bytes")
                    return
                piece, data = (data, b"") if end < 0 else (data[:end], data[end:])
                self._head_bytes += len(piece)
                # Kept until the head is parsed, or while the parser skips empty lines.
                self._tail = piece[-3:] if len(piece) >= 3 else (self._tail + piece)[-3:]
            elif self._body_left > 0:
                left = self._body_left
                piece, data = data[:left], data[left:]
                self._body_left = left - len(piece)
            elif self._body_left < 0:  # chunked: the last chunk and its trailers end blank
                end = _blank_line_end(self._tail, data)
                piece, data = (data, b"") if end < 0 else (data[:end], data[end:])
                self._tail = piece[-3:] if len(piece) >= 3 else (self._tail + piece)[-3:]
            else:  # not expected: the parser ends a message with its declared length
                piece, data = data, b""
            super().data_received(piece)
            if self._socket.is_closing() or self.parser.should_upgrade():
                return  # refused, or an upgrade uvicorn declines: it reads no further

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:
            self._head_since = self._clock.tick

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_since = None
        self._in_body = True
        self._body_since = self._clock.tick
        self._tail = b""
        # The parser has refused a duplicate Content-Length and one beside Transfer-Encoding.
        self._body_left = 0
        for name, value in self.headers:
            if name == b"content-length":
                self._body_left = int(value)
            elif name == b"transfer-encoding":
                self._body_left = -1
        handler = self._direct_handler() if self._direct_route is not None else None
        if handler is None:
            super().on_headers_complete()
        else:
            self.cycle = cast(Any, _DirectCycle(cast(Scope, self.scope), handler))

    def on_body(self, body: bytes) -> None:
        cycle: object = self.cycle
        if type(cycle) is _DirectCycle:
            cycle.body += body  # at most DIRECT_BODY bytes: the parser holds it to its length
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle: object = self.cycle
        if type(cycle) is _DirectCycle:
            cycle.more_body = False
            self._run(cycle)
        else:
            super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        self._in_body = False

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timeout noted for the clock instead of a timer armed.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self._refusal is not None and not self.pipeline:
            self._refuse(*self._refusal)
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_since = self._clock.tick

    # Direct routes

    def _direct_handler(self) -> DirectHandler | None:
        parser = self.parser
        if (
            parser.get_method() != b"POST"
            or self.expect_100_continue
            or parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or parser.should_upgrade()
            or self.limit_concurrency is not None
        ):
            return None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return None  # pipelined: uvicorn queues it behind the answer under way
        length: bytes | None = None
        for name, value in self.headers:
            if name == b"content-length" and length is None:
                length = value
            elif name in (b"content-length", b"transfer-encoding"):
                return None
        if length is None or not length.isdigit() or int(length) > DIRECT_BODY:
            return None
        url = httptools.parse_url(self.url)
        raw_path: bytes = url.path
        if b"%" in raw_path:
            return None
        scope = cast(Scope, self.scope)
        scope["method"] = "POST"
        scope["path"] = self.root_path + raw_path.decode("ascii")
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = url.query or b""
        assert self._direct_route is not None  # noqa: S101 - checked by the caller
        return self._direct_route(scope)

    def _run(self, cycle: _DirectCycle) -> None:
        """Call the handler; write its answer now, or when its future or coroutine is done."""
        try:
            answer = cycle.handler(cycle.scope, bytes(cycle.body))
        except Exception as exc:
            self._write(cycle, _failed(exc))
            return
        if type(answer) is tuple:
            self._write(cycle, answer)
            return
        if not isinstance(answer, asyncio.Future):
            # A coroutine: run as uvicorn runs an application, so a shutdown waits for it.
            answer = self.loop.create_task(cast(Coroutine[Any, Any, Rendered], answer))
            task = cast("asyncio.Task[None]", answer)  # uvicorn's set of the app's tasks
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
        answer.add_done_callback(partial(self._done, cycle))

    def _done(self, cycle: _DirectCycle, answer: asyncio.Future[Rendered]) -> None:
        if answer.cancelled():
            self._write(cycle, _failed(None))
        elif (exc := answer.exception()) is not None:
            self._write(cycle, _failed(exc))
        else:
            self._write(cycle, answer.result())

    def _write(self, cycle: _DirectCycle, answer: Rendered) -> None:
        status, headers, body = answer
        cycle.response_started = True
        cycle.response_complete = True
        if cycle.disconnected or self.transport.is_closing():
            return  # the client is gone (a request pipelined behind this one holds `cycle`)
        content = [STATUS_LINE[status]]
        said_close = False  # the handler's headers close the connection themselves
        for name, value in (*self.server_state.default_headers, *headers):
            if name == b"connection" and b"close" in value.lower():
                said_close = True
            content += (name, b": ", value, b"\r\n")
        # A handler that failed is closed after, like one a shutdown asked to close.
        keep_alive = cycle.keep_alive and answer is not _FAILED and not said_close
        if not keep_alive and not said_close:
            content.append(b"connection: close\r\n")
        content += (self._direct_headers, b"\r\n", body)
        cast(_Transport, self.transport).write_now(b"".join(content))  # whole: no need to hold
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()

    # The bounds

    def check_deadlines(self, tick: int) -> None:
        """Refuse the request under way if its head or its body has taken too long (a tick
        the server held the body back by flow control, because the application was not
        reading, is not the client's and moves the body's start on)."""
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
            self._body_since += 1
        elif tick - self._body_since > self._clock.body_ticks:
            cycle = self.cycle
            if cycle is None or not cycle.response_started:
                detail = f"the request body did not arrive within {self._body_timeout:g} s"
                self._refuse(408, detail)
            elif cycle.response_complete:
                # Answered early (and kept alive): nothing waits for the rest of this body.
                self._in_body = False
                self._close_now()

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
        """Answer a request the application never saw with a problem document, and close.

        A head refused while earlier requests on the connection are still being answered
        (pipelined) is answered after them, so their clients still get their answers.
        """
        self._head_since = None
        self._in_body = False
        cycle = self.cycle
        if self._in_head and (self.pipeline or (cycle is not None and not cycle.response_complete)):
            self._refusal = (status, detail)
            self._socket.pause_reading()
            return
        slug = "request-timeout" if status == 408 else "request-header-too-large"
        _, headers, body = render(HTTPProblem(status, slug, detail))
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        lines.append(b"connection: close\r\n\r\n")
        self._socket.write(b"".join(lines) + body)
        self._lingering = False
        self._socket.close()


def _blank_line_end(tail: bytes, data: bytes) -> int:
    """Where the first CRLF CRLF of ``tail + data`` ends, as an index into `data` (-1: none).

    `tail` is the end (at most 3 bytes) of what came before, in which a blank line may have
    begun. The parser takes no bare LF, so a head ends at its first CRLF CRLF.
    """
    if tail:
        at = (tail + data[:3]).find(b"\r\n\r\n")
        if at >= 0:
            return at + 4 - len(tail)
    at = data.find(b"\r\n\r\n")
    return at + 4 if at >= 0 else -1


def _failed(exc: BaseException | None) -> Rendered:
    """The handler answers its own errors: one that raises (or is cancelled) is a bug."""
    log.error("Exception in a direct route", exc_info=exc)
    return _FAILED


# The start-up probe

#: Methods of `HttpToolsProtocol` this module overrides or calls, with their parameters
#: (after ``self``).
REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    "connection_made": ("transport",),
    "connection_lost": ("exc",),
    "eof_received": (),
    "data_received": ("data",),
    "on_message_begin": (),
    "on_headers_complete": (),
    "on_body": ("body",),
    "on_message_complete": (),
    "on_response_complete": (),
    "_start_asgi_task": ("cycle", "app"),
}
#: Attributes of a protocol this module reads: once built, once connected, once a request
#: head has been parsed.
REQUIRED_BUILT = (
    "app",
    "loop",
    "parser",
    "cycle",
    "pipeline",
    "server_state",
    "connections",
    "tasks",
    "timeout_keep_alive",
    "limit_concurrency",
    "root_path",
)
REQUIRED_CONNECTED = ("transport", "flow")
REQUIRED_PARSED = ("url", "headers", "scope", "expect_100_continue")
#: Attributes of a request cycle (and of the server state, and of flow control) it reads.
REQUIRED_CYCLE = (
    "response_started",
    "response_complete",
    "more_body",
    "keep_alive",
    "disconnected",
    "message_event",
)
REQUIRED_STATE = ("default_headers", "total_requests")
REQUIRED_FLOW = ("read_paused", "resume_reading")

_probed: list[str | None] = []


def probe() -> str | None:
    """None if `FastProtocol` can run on the installed uvicorn; else why not (checked once)."""
    if not _probed:
        # In a thread of its own, with a loop of its own: callable from inside a running loop.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="probe") as pool:
            _probed.append(pool.submit(_probe).result())
    return _probed[0]


def _probe() -> str | None:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if not isinstance(STATUS_LINE, dict) or not STATUS_LINE.get(202, b"").startswith(b"HTTP/1.1"):
        return "httptools_impl.STATUS_LINE is not a table of status lines"
    for name, params in REQUIRED_METHODS.items():
        method = getattr(HttpToolsProtocol, name, None)
        if not callable(method):
            return f"HttpToolsProtocol.{name} is missing"
        if tuple(inspect.signature(method).parameters)[1:] != params:
            return f"HttpToolsProtocol.{name} does not take ({', '.join(params)})"
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(_serve_one(), 5))
    except Exception as exc:
        return f"a probe request failed: {exc!r}"
    finally:
        loop.close()


async def _probe_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class _ProbeTransport(asyncio.Transport):
    """Records what the probe's protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def _missing(what: str, obj: object, names: tuple[str, ...]) -> str | None:
    absent = [name for name in names if not hasattr(obj, name)]
    return f"{what} has no {', '.join(absent)}" if absent else None


async def _serve_one() -> str | None:
    """Build a stock protocol as uvicorn's server does, serve one request, check what we read."""
    from uvicorn.server import ServerState

    config = uvicorn.Config(_probe_app, http="httptools", lifespan="off", log_config=None)
    config.load()
    protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    if problem := _missing("HttpToolsProtocol", protocol, REQUIRED_BUILT):
        return problem
    if problem := _missing("ServerState", protocol.server_state, REQUIRED_STATE):
        return problem
    transport = _ProbeTransport()
    protocol.connection_made(transport)
    try:
        if problem := _missing("a connected HttpToolsProtocol", protocol, REQUIRED_CONNECTED):
            return problem
        if problem := _missing("FlowControl", protocol.flow, REQUIRED_FLOW):
            return problem
        protocol.data_received(b"POST /probe HTTP/1.1\r\nhost: probe\r\ncontent-length: 0\r\n\r\n")
        if problem := _missing("a parsing HttpToolsProtocol", protocol, REQUIRED_PARSED):
            return problem
        if problem := _missing("RequestResponseCycle", protocol.cycle, REQUIRED_CYCLE):
            return problem
        if protocol.tasks:  # the application's task, which `_start_asgi_task` would start
            await asyncio.wait(set(protocol.tasks))
    finally:
        protocol.connection_lost(None)
    if not protocol.cycle.response_complete or not transport.written.startswith(STATUS_LINE[202]):
        return f"a probe request was answered {bytes(transport.written[:40])!r}"
    return None
