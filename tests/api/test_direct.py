"""Direct routes (`spillway.api.uvicorn_fast`): a plain small POST is answered by the protocol
itself, anything else by ASGI, and both the same way on the wire.

The server here is uvicorn with `FastProtocol`, in this process, over real sockets, so the
application can say which path answered each request (``x-path``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from tests.api.servers import in_process

from spillway.api.uvicorn_fast import DIRECT_BODY, DirectHandler

pytestmark = pytest.mark.fast_protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Rendered = tuple[int, list[tuple[bytes, bytes]], bytes]


def _answer(path: bytes, body: bytes, status: int = 200) -> Rendered:
    """The body's length, from the path that read it."""
    out = b"%d" % len(body)
    headers = [(b"x-path", path), (b"content-length", b"%d" % len(out))]
    return status, headers, out


@dataclass
class EchoApp:
    """Answers with the length of the body it read; POST /direct may be answered directly."""

    delay: float = 0.0  # how long a direct answer takes
    fail: bool = False  # the direct handler raises
    done: list[bytes] = field(default_factory=list)  # the bodies direct answers were made for
    started: asyncio.Event = field(default_factory=asyncio.Event)  # a direct handler began

    style: str = "coroutine"  # how the direct handler answers: coroutine, now or future
    close: bool = False  # the direct answer says `connection: close` itself

    def direct_route(self, scope: Scope) -> DirectHandler | None:
        if scope["path"] != "/direct":
            return None
        handlers: dict[str, DirectHandler] = {
            "coroutine": self.direct,
            "now": self.now,
            "future": self.future,
        }
        return handlers[self.style]

    def now(self, scope: Scope, body: bytes) -> Rendered:
        """The answer at once, as Spillway answers a request it refuses."""
        if self.fail:
            raise RuntimeError("a bug in the handler")
        self.done.append(body)
        status, headers, out = _answer(b"direct", body, 202)
        if self.close:
            headers.append((b"connection", b"close"))
        return status, headers, out

    def future(self, scope: Scope, body: bytes) -> asyncio.Future[Rendered]:
        """The answer's future, as Spillway answers once Redis has the task."""
        answer: asyncio.Future[Rendered] = asyncio.get_running_loop().create_future()

        def settle() -> None:
            try:
                answer.set_result(self.now(scope, body))
            except RuntimeError as exc:
                answer.set_exception(exc)

        asyncio.get_running_loop().call_soon(settle)
        return answer

    async def direct(self, scope: Scope, body: bytes) -> Rendered:
        self.started.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("a bug in the handler")
        self.done.append(body)
        return _answer(b"direct", body, 202)

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status, headers, out = _answer(b"asgi", body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})


@dataclass
class Served:
    app: EchoApp
    server: uvicorn.Server
    port: int

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    app = EchoApp()
    async with in_process(app, head_timeout=5, body_timeout=5) as (server, port):
        yield Served(app, server, port)


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One answer: its head and its body (by its content-length), after any 100 Continue."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        while head.startswith(b"HTTP/1.1 100 "):
            head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        return head, await reader.readexactly(length)


def _post(path: str, body: bytes, *headers: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"host: test", *headers]
    lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize("style", ["coroutine", "now", "future"])
async def test_a_small_post_is_answered_directly_and_the_connection_kept(
    served: Served, style: str
) -> None:
    served.app.style = style
    reader, writer = await served.connect()
    try:
        for size in (0, 10, DIRECT_BODY):
            writer.write(_post("/direct", b"x" * size))
            head, body = await _read_answer(reader)

            assert head.startswith(b"HTTP/1.1 202 Accepted\r\n")
            assert b"x-path: direct\r\n" in head
            assert b"date: " in head  # the server's default headers, as through ASGI
            assert b"connection: close" not in head
            assert body == b"%d" % size
    finally:
        writer.close()
    assert served.app.done == [b"", b"x" * 10, b"x" * DIRECT_BODY]


async def test_a_body_in_pieces_is_read_whole(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        request = _post("/direct", b"0123456789" * 100)
        for i in range(0, len(request), 97):
            writer.write(request[i : i + 97])
            await writer.drain()
        head, body = await _read_answer(reader)
    finally:
        writer.close()

    assert b"x-path: direct\r\n" in head
    assert body == b"1000"
    assert served.app.done == [b"0123456789" * 100]


@pytest.mark.parametrize(
    ("request_bytes", "size"),
    [
        pytest.param(_post("/asgi", b"abc"), 3, id="another route"),
        pytest.param(_post("/direct", b"x" * (DIRECT_BODY + 1)), DIRECT_BODY + 1, id="larger"),
        pytest.param(
            b"POST /direct HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            3,
            id="chunked",
        ),
        pytest.param(_post("/direct", b"abc", b"expect: 100-continue"), 3, id="expect"),
        pytest.param(_post("/direct", b"abc", b"connection: close"), 3, id="connection close"),
        pytest.param(
            b"POST /direct HTTP/1.0\r\nhost: test\r\ncontent-length: 3\r\n\r\nabc", 3, id="1.0"
        ),
        pytest.param(
            b"PUT /direct HTTP/1.1\r\nhost: test\r\ncontent-length: 3\r\n\r\nabc", 3, id="PUT"
        ),
    ],
)
async def test_anything_else_goes_through_asgi(
    served: Served, request_bytes: bytes, size: int
) -> None:
    reader, writer = await served.connect()
    try:
        writer.write(request_bytes)
        head, body = await _read_answer(reader)
    finally:
        writer.close()

    assert b" 200 OK\r\n" in head.split(b"\r\n", 1)[0] + b"\r\n"
    assert b"x-path: asgi\r\n" in head
    assert body == b"%d" % size
    assert served.app.done == []


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    served.app.delay = 0.05  # the first is still under way when the others arrive
    reader, writer = await served.connect()
    try:
        writer.write(_post("/direct", b"a") + _post("/direct", b"bb") + _post("/asgi", b"ccc"))
        answers = [await _read_answer(reader) for _ in range(3)]
    finally:
        writer.close()

    assert [body for _, body in answers] == [b"1", b"2", b"3"]
    # The first is answered directly; those queued behind it go through ASGI, as uvicorn
    # queues them.
    assert b"x-path: direct\r\n" in answers[0][0]
    assert all(b"x-path: asgi\r\n" in head for head, _ in answers[1:])


@pytest.mark.parametrize("style", ["coroutine", "now", "future"])
async def test_a_handler_that_raises_gets_500_and_the_connection_closes(
    served: Served, style: str
) -> None:
    served.app.style = style
    served.app.fail = True
    reader, writer = await served.connect()
    try:
        writer.write(_post("/direct", b"abc"))
        head, body = await _read_answer(reader)
        async with asyncio.timeout(5):
            rest = await reader.read()
    finally:
        writer.close()

    assert head.startswith(b"HTTP/1.1 500 ")
    assert b"connection: close\r\n" in head
    assert body == b"Internal Server Error"
    assert rest == b""  # closed


async def test_a_client_gone_mid_answer_leaves_the_server_serving(served: Served) -> None:
    served.app.delay = 0.1
    _, writer = await served.connect()
    writer.write(_post("/direct", b"abc"))
    await writer.drain()
    writer.close()  # before the answer
    await writer.wait_closed()

    reader, writer = await served.connect()
    try:
        writer.write(_post("/direct", b"defg"))
        _, body = await _read_answer(reader)
    finally:
        writer.close()

    assert body == b"4"
    assert served.app.done == [b"abc", b"defg"]  # the first was handled all the same


async def test_a_shutdown_waits_for_a_direct_answer_and_closes_after_it(served: Served) -> None:
    served.app.delay = 0.3
    reader, writer = await served.connect()
    try:
        writer.write(_post("/direct", b"abc"))
        await writer.drain()
        async with asyncio.timeout(5):
            await served.app.started.wait()
        served.server.should_exit = True
        head, body = await _read_answer(reader)
    finally:
        writer.close()

    assert head.startswith(b"HTTP/1.1 202 ")
    assert b"connection: close\r\n" in head
    assert body == b"3"


async def test_an_answer_that_closes_is_sent_with_one_connection_header(served: Served) -> None:
    served.app.style = "now"
    served.app.close = True
    reader, writer = await served.connect()
    try:
        writer.write(_post("/direct", b"abc"))
        head, body = await _read_answer(reader)
        async with asyncio.timeout(5):
            rest = await reader.read()
    finally:
        writer.close()

    assert head.startswith(b"HTTP/1.1 202 ")
    assert head.lower().count(b"connection: ") == 1
    assert body == b"3"
    assert rest == b""  # closed
