"""`DirectProtocol`: uvicorn's httptools protocol, answering an application's hot routes itself.

uvicorn runs every request as an ASGI cycle: an event, a task around the application's
coroutine, ``receive`` and ``send`` calls, and each answer's headers checked and encoded in
Python. That machinery is most of what uvicorn costs per request: in alternating wrk runs on
this machine (2 processes, 64 connections), a 202 written by the protocol itself answered
1.4x as many requests as the same 202 from a bare ASGI application.

An application may therefore name **direct routes**: ``direct_route(scope)`` returns a handler
for a request it can answer from its scope and its whole body, or None. The protocol asks only
for a plain request it can serve without ASGI's help: ``POST``, HTTP/1.1, kept alive, no
``Expect: 100-continue``, no upgrade, not pipelined behind an answer under way, and a body
declared by ``Content-Length`` of at most `DIRECT_BODY` bytes. It reads that body, calls
``handler(scope, body)`` and writes the ``(status, headers, body)`` it gets, with the
server's default headers, in one write. The handler may return that answer, a future of it
(Spillway's accept routes: no coroutine per request), or a coroutine, which runs as a task
like an ASGI application's. A graceful shutdown waits for each: for a task as uvicorn does,
for a future through its connection, which closes after the answer. Every other request, and
every request to an application without direct routes, goes through ASGI as before, so the
bounds of `spillway.api.protocol` apply to both.

The handler must answer every request itself (problems included) and set ``content-length``;
one that raises gets a 500 and its connection closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from functools import partial
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from spillway.api.problems import Rendered

__all__ = ["DIRECT_BODY", "DirectHandler", "DirectProtocol"]

log = logging.getLogger("spillway.api")

#: The largest body a direct route is given: larger ones go through ASGI, which streams them.
DIRECT_BODY = 64 * 1024

Scope = MutableMapping[str, Any]
#: Given the request's scope and whole body: the answer, its future, or a coroutine of it.
DirectHandler = Callable[[Scope, bytes], Rendered | Awaitable[Rendered]]

_FAILED: Rendered = (
    500,
    [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
    b"Internal Server Error",
)


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


class DirectProtocol(HttpToolsProtocol):
    """HTTP/1.1 serving the loaded application's direct routes without ASGI."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        route = getattr(self.app, "direct_route", None)
        self._direct_route: Callable[[Scope], DirectHandler | None] | None = route

    def on_headers_complete(self) -> None:
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

    def write_answer(self, data: bytes) -> None:
        """Send a whole answer (a subclass may write it otherwise)."""
        self.transport.write(data)

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
        content += (b"\r\n", body)
        self.write_answer(b"".join(content))
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()


def _failed(exc: BaseException | None) -> Rendered:
    """The handler answers its own errors: one that raises (or is cancelled) is a bug."""
    log.error("Exception in a direct route", exc_info=exc)
    return _FAILED
