"""The server's own bounds (`spillway.api.uvicorn_fast`): request heads bounded in size and time,
and a lingering close, so a refused upload gets its answer and not a reset.

Those are the fast protocol's (marked ``fast_protocol``); the rest hold on uvicorn's stock
protocol too."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.api.servers import ApiServer, in_process, serving

from spillway.api.serve import HEAD_LIMIT
from spillway.embedded import EmbeddedRedis


@pytest.fixture(scope="module")
def hasty_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """An API server that waits at most 1 s for a request head, or for a body."""
    env = {"SPILLWAY_HEAD_TIMEOUT": "1", "SPILLWAY_BODY_TIMEOUT": "1"}
    yield from serving(redis_server.url, tmp_path_factory.mktemp("api"), env)


@pytest.fixture(scope="module")
def hasty_stock_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """`hasty_server` on uvicorn's stock protocol (SPILLWAY_FAST_PATH=0)."""
    env = {"SPILLWAY_HEAD_TIMEOUT": "1", "SPILLWAY_BODY_TIMEOUT": "1", "SPILLWAY_FAST_PATH": "0"}
    yield from serving(redis_server.url, tmp_path_factory.mktemp("api"), env)


def _head_of(size: int, *, request: bytes = b"GET /healthz HTTP/1.1\r\nHost: test\r\n") -> bytes:
    """A request head of exactly `size` bytes, the final CRLF included, padded by one header."""
    head = request + b"X-Pad: " + b"a" * (size - len(request) - len(b"X-Pad: \r\n\r\n"))
    head += b"\r\n\r\n"
    assert len(head) == size
    return head


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(5):
        return await reader.read()


async def _send(server: ApiServer, data: bytes) -> bytes:
    """Send `data` on a new connection, then return all the server sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        return await _answer(reader)
    finally:
        writer.close()


async def _head(reader: asyncio.StreamReader) -> bytes:
    """The head of the server's answer."""
    async with asyncio.timeout(5):
        return await reader.readuntil(b"\r\n\r\n")


@pytest.mark.fast_protocol
async def test_a_head_over_the_limit_gets_431_and_the_server_serves_on(
    api_server: ApiServer, http: httpx.AsyncClient
) -> None:
    big = b"a" * (HEAD_LIMIT + 16 * 1024)  # never followed by the end of the head
    answer = await _send(api_server, b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + big)

    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"content-type: application/problem+json" in answer
    assert b"connection: close" in answer
    assert b"urn:spillway:problem:request-header-too-large" in answer
    assert (await http.get("/healthz")).status_code == 200


@pytest.mark.fast_protocol
async def test_a_head_one_byte_over_the_limit_gets_431_even_in_one_read_with_its_body(
    api_server: ApiServer,
) -> None:
    # The head arrives complete, with its body, in a single write: the limit is the head's
    # size, not what is left over after a read.
    body = b'{"type": "echo", "payload": {"n": 1}}'
    request = (
        b"POST /tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n" % len(body)
    )
    answer = await _send(api_server, _head_of(HEAD_LIMIT + 1, request=request) + body)

    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in answer


@pytest.mark.fast_protocol
@pytest.mark.parametrize("piece", [1000, 7])
async def test_a_head_one_byte_over_the_limit_gets_431_in_many_reads(
    api_server: ApiServer, piece: int
) -> None:
    head = _head_of(HEAD_LIMIT + 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", api_server.port)
    try:
        for at in range(0, len(head), piece):  # a write each: the blank line may straddle two
            writer.write(head[at : at + piece])
            await writer.drain()
        answer = await _answer(reader)
    finally:
        writer.close()

    assert answer.startswith(b"HTTP/1.1 431 ")


@pytest.mark.fast_protocol
async def test_a_head_over_the_limit_behind_a_pipelined_request_gets_431(
    api_server: ApiServer,
) -> None:
    small = _head_of(200)
    answer = await _send(api_server, small + _head_of(HEAD_LIMIT + 1))

    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 431 " in answer


async def test_a_head_of_exactly_the_limit_is_served(api_server: ApiServer) -> None:
    # In one write, and split so the final CRLF CRLF straddles two writes.
    head = _head_of(HEAD_LIMIT)
    for parts in ([head], [head[:-3], head[-3:]], [head[:-1], head[-1:]]):
        reader, writer = await asyncio.open_connection("127.0.0.1", api_server.port)
        try:
            for part in parts:
                writer.write(part)
                await writer.drain()
            answer = await _head(reader)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 200 "), parts


@pytest.mark.fast_protocol
async def test_a_head_sent_a_byte_at_a_time_gets_408_at_the_deadline(
    hasty_server: ApiServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hasty_server.port)
    started = time.monotonic()
    answer = asyncio.ensure_future(_head(reader))
    try:
        trickle = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 200
        for byte in trickle:  # a byte every 50 ms: 12 s for all, never a complete head
            if answer.done():
                break
            writer.write(bytes([byte]))
            await asyncio.wait([answer], timeout=0.05)
        head = await answer
    finally:
        writer.close()

    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"content-type: application/problem+json" in head
    assert 0.9 <= time.monotonic() - started < 4  # the 1 s deadline


@pytest.mark.fast_protocol
async def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(
    hasty_server: ApiServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hasty_server.port)
    started = time.monotonic()
    try:
        answer = await _answer(reader)
    finally:
        writer.close()

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 0.9 <= time.monotonic() - started < 4  # the 1 s deadline


@pytest.mark.fast_protocol
async def test_a_small_body_that_stops_arriving_gets_408_and_the_server_serves_on(
    hasty_server: ApiServer,
) -> None:
    # A body small enough to be read without the large-read bound: the server's own pause
    # bound answers for it.
    body = b'{"type": "echo", "payload": {"n": 1}}'
    head = (
        b"POST /tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    started = time.monotonic()
    answer = await _send(hasty_server, head + body[:-1])  # all but the last byte, then nothing

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"urn:spillway:problem:request-timeout" in answer
    assert 0.9 <= time.monotonic() - started < 4  # the 1 s bound
    async with httpx.AsyncClient(base_url=hasty_server.url, timeout=10.0) as http:
        accepted = await http.post("/tasks", json={"type": "echo", "payload": {"n": 2}})
    assert accepted.status_code == 202


async def _trickle(server: ApiServer, head: bytes, body: bytes, every: float) -> bytes:
    """Send `head`, then `body` a byte every `every` seconds until the server answers; return
    all it sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    answer = asyncio.ensure_future(_answer_within(reader, 10))
    try:
        writer.write(head)
        for byte in body:
            if answer.done():
                break
            writer.write(bytes([byte]))
            await asyncio.wait([answer], timeout=every)
        return await answer
    finally:
        writer.close()


async def _answer_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    async with asyncio.timeout(seconds):
        return await reader.read()


@pytest.mark.parametrize("protocol", ["fast", "stock"])
async def test_a_small_body_trickled_in_gets_408_at_the_deadline_and_its_connection_closed(
    request: pytest.FixtureRequest, protocol: str
) -> None:
    # A 100-byte body a byte every 0.45 s never pauses for long, and would take 45 s: the
    # body's deadline (1 s here) is counted from its head, not from its last byte. The pace
    # keeps bytes out of the 1-1.25 s window the answer comes in: a byte that reaches a
    # socket just closed would be answered with a reset, which discards the unread 408.
    server: ApiServer = request.getfixturevalue(
        "hasty_server" if protocol == "fast" else "hasty_stock_server"
    )
    body = b'{"type": "echo", "payload": {"pad": "%s"}}' % (b"a" * 60)
    assert len(body) == 100
    head = (
        b"POST /tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    started = time.monotonic()
    answer = await _trickle(server, head, body, 0.45)  # returns once the server has closed
    took = time.monotonic() - started

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer
    assert b"urn:spillway:problem:request-timeout" in answer
    assert 0.9 <= took < 3  # the 1 s deadline (to the fast protocol's 0.25 s tick)


@pytest.mark.fast_protocol
async def test_a_body_still_trickling_after_an_early_answer_has_its_connection_closed(
    hasty_server: ApiServer,
) -> None:
    # A route that reads no body answers at once and keeps the connection alive; a body that
    # keeps trickling in after that is dropped, then cut at its deadline.
    head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", hasty_server.port)
    started = time.monotonic()
    try:
        writer.write(head)
        closed = asyncio.ensure_future(_answer_within(reader, 10))
        for _ in range(50):  # a byte every 0.45 s (see above): 22 s for all of it
            if closed.done():
                break
            writer.write(b"a")
            await asyncio.wait([closed], timeout=0.45)
        answer = await closed
    finally:
        writer.close()

    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"408" not in answer  # one answer per request
    assert 0.9 <= time.monotonic() - started < 3


async def test_a_slow_long_poll_is_not_cut_by_the_head_deadline(hasty_server: ApiServer) -> None:
    # The deadline bounds the head only: a request whose answer takes longer is unaffected.
    async with httpx.AsyncClient(base_url=hasty_server.url, timeout=10.0) as http:
        accepted = await http.post("/tasks", json={"type": "echo", "payload": {"n": 1}})
        started = time.monotonic()
        response = await http.get(f"/tasks/{accepted.json()['task_id']}", params={"wait": 2})

    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert time.monotonic() - started >= 1.9


@pytest.mark.fast_protocol
async def test_concurrent_oversized_uploads_each_get_their_413(api_server: ApiServer) -> None:
    # Each client sends the whole of a body four times over the limit, as a client that does
    # not wait for 100-continue does. The server answers 413 at once and reads on to drop the
    # rest; closing with the body unread would reset the connection, and the client would
    # lose its answer.
    body = b'{"type": "echo", "payload": "' + b"a" * (4 << 20) + b'"}'
    head = (
        b"POST /tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )

    async def upload() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", api_server.port)
        try:
            writer.write(head + body)
            await writer.drain()
            answer = await _answer(reader)
            return answer[:13].decode()
        except ConnectionError as exc:
            return type(exc).__name__
        finally:
            writer.close()

    outcomes = Counter(await asyncio.gather(*(upload() for _ in range(20))))

    assert outcomes == {"HTTP/1.1 413 ": 20}


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app answering 200 with an empty body."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})


async def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout() -> None:
    async with in_process(_ok, head_timeout=10, body_timeout=10, keep_alive=1) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            head = await _head(reader)
            answered = time.monotonic()
            rest = await _answer(reader)  # until the server closes
            idled = time.monotonic() - answered
        finally:
            writer.close()

    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest == b""
    assert 0.9 <= idled < 3  # the 1 s timeout, to the clock's tick (0.25 s)


async def test_a_connection_in_use_outlives_the_keep_alive_timeout() -> None:
    async with in_process(_ok, head_timeout=10, body_timeout=10, keep_alive=1) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        try:
            heads = []
            while time.monotonic() - started < 2.5:  # a request every 0.5 s, on one connection
                writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                heads.append(await _head(reader))
                await asyncio.sleep(0.5)
        finally:
            writer.close()

    assert len(heads) >= 4
    assert all(head.startswith(b"HTTP/1.1 200 ") for head in heads)
