"""Body limits, enforced while the body streams in: 413 before the rest is sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from tests.api.servers import ApiServer, serving

from spillway.embedded import EmbeddedRedis

LIMIT = 1_048_576  # the default max_payload_bytes


async def _exchange(server: ApiServer, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send a request head and some body bytes, never the rest, and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head)
        for part in body_parts:
            writer.write(part)
            await writer.drain()
        async with asyncio.timeout(5):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()


Stalled = list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


async def _stall(server: ApiServer, body: bytes, sent: int, count: int, into: Stalled) -> None:
    """Open `count` uploads of `body` that send its first `sent` bytes and no more."""
    head = (
        b"POST /tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head + body[:sent])
        await writer.drain()
        into.append((reader, writer))


async def test_declared_size_over_the_limit_is_413_before_any_body_is_sent(
    api_server: ApiServer,
) -> None:
    head = (
        b"POST /tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10485760\r\n\r\n"
    )
    answer = await _exchange(api_server, head, [])

    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"content-type: application/problem+json" in answer.lower()


async def test_chunked_body_over_the_limit_is_413_without_reading_the_rest(
    api_server: ApiServer,
) -> None:
    head = (
        b"POST /tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 65536
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    # Just over the limit, and never the terminating zero-length chunk.
    answer = await _exchange(api_server, head, [framed] * (LIMIT // len(chunk) + 1))

    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_body_within_the_limit_is_accepted(http: httpx.AsyncClient) -> None:
    blob = "x" * (LIMIT - 100)
    response = await http.post("/tasks", json={"type": "echo", "payload": {"blob": blob}})

    assert response.status_code == 202


async def test_chunked_body_within_the_limit_is_accepted(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"type": "echo", '
        yield b'"payload": {"n": 1}}'

    response = await http.post(
        "/tasks", content=chunks(), headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 202


async def test_slow_uploaders_do_not_hold_up_small_requests(
    api_server: ApiServer, http: httpx.AsyncClient
) -> None:
    # More stalled uploads than the large-body reads allowed at once: each has sent all but the
    # last byte of a small body. Complete small requests must not queue behind them.
    body = b'{"type": "echo", "payload": {"n": 1}}'
    stalled: Stalled = []
    try:
        await _stall(api_server, body, len(body) - 1, 8, stalled)
        await asyncio.sleep(0.2)  # let the server start reading every stalled body

        async with asyncio.timeout(5):
            answers = await asyncio.gather(
                *(http.post("/tasks", json={"type": "echo", "payload": {"n": i}}) for i in range(8))
            )
        assert [a.status_code for a in answers] == [202] * 8

        for _, writer in stalled:  # the stalled uploads complete and are accepted too
            writer.write(body[-1:])
            await writer.drain()
        async with asyncio.timeout(5):
            heads = [await reader.readuntil(b"\r\n\r\n") for reader, _ in stalled]
        assert all(h.startswith(b"HTTP/1.1 202 ") for h in heads)
    finally:
        for _, writer in stalled:
            writer.close()


@pytest.fixture(scope="module")
def impatient_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """An API server that waits at most 1 s for the rest of a large body."""
    env = {"SPILLWAY_BODY_TIMEOUT": "1"}
    yield from serving(redis_server.url, tmp_path_factory.mktemp("api"), env)


async def test_stalled_large_uploads_get_408_and_free_their_reads(
    impatient_server: ApiServer,
) -> None:
    # More stalled uploads than the large-body reads a process allows at once, each with half
    # of a 200 KB body sent. Each is answered 408 with its connection closed, and a complete
    # large request that arrives behind them is read and accepted.
    body = b'{"type": "echo", "payload": {"blob": "%s"}}' % (b"x" * 200_000)
    stalled: Stalled = []
    try:
        await _stall(impatient_server, body, len(body) // 2, 6, stalled)
        started = time.monotonic()
        async with (
            httpx.AsyncClient(base_url=impatient_server.url, timeout=10.0) as http,
            asyncio.timeout(8),
        ):
            answer = await http.post(
                "/tasks", content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 202
            for reader, _ in stalled:
                response = await reader.read()  # the whole answer, then the server's close
                assert response.startswith(b"HTTP/1.1 408 ")
                assert b"connection: close" in response.lower()
                assert b"urn:spillway:problem:request-timeout" in response
        assert time.monotonic() - started < 6  # the 1 s bound, not the clients' patience
    finally:
        for _, writer in stalled:
            writer.close()
