"""A request body as the accept routes read it: bounded in size and time, then strict JSON.

`check_headers` refuses a wrong media type or a declared size over the limit before anything
is read; `read_body` reads an ASGI body, refused as soon as it passes the limit or its deadline;
`parse_json` accepts only JSON Spillway can store unchanged, and `parse_large_json` does the
same for a large body without holding the event loop for all of it.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import orjson

from spillway.api.headers import Found, Scope
from spillway.api.problems import HTTPProblem
from spillway.codec import JSONError, check_depth, check_depth_in_steps, check_duplicate_keys

__all__ = [
    "LARGE_JSON",
    "ClientGone",
    "Receive",
    "Scope",
    "check_headers",
    "parse_json",
    "parse_large_json",
    "read_body",
    "too_large",
]

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

_JSON = b"application/json"


class ClientGone(Exception):
    """The client disconnected before its request body arrived; nothing to answer."""


def check_headers(found: Found, limit: int) -> int | None:
    """Refuse a wrong media type or a declared size over the limit before reading anything
    (`found`: the request's headers, `request_headers`)."""
    content_type, content_length = found.get(b"content-type"), found.get(b"content-length")
    if content_type != _JSON:  # else as written by almost every client: nothing to parse
        media = (content_type or b"").split(b";", 1)[0].strip().lower()
        if media != _JSON and not media.endswith(b"+json"):
            shown = media.decode("latin-1") or "none"
            detail = f"send application/json, not {shown}"
            raise HTTPProblem(415, "unsupported-media-type", detail)
    if content_length is None:
        return None
    if not content_length.isdigit():
        raise HTTPProblem(400, "bad-request", "Content-Length is not a number")
    size = int(content_length)
    if size > limit:
        raise HTTPProblem(
            413, "payload-too-large", f"the body is {size} bytes; the limit is {limit}", limit=limit
        )
    return size


# Bodies that arrive in more than one message are read a few at a time: each may be buffered
# up to the limit before it is refused (docs/benchmarks.md#large-body-reads).
_LARGE_READS = 4
# A body no larger than this that arrived in one message is completed without the semaphore.
_SMALL_BODY = 64 * 1024
_large_reads: asyncio.Semaphore | None = None


async def read_body(receive: Receive, limit: int, expected: int | None, timeout: float) -> bytes:
    """The request body, refused with 413 as soon as more than `limit` bytes have arrived,
    and with 408 if it has not all arrived `timeout` seconds after the first read.

    Time spent waiting for a large-read permit does not count: it is the server's, not the
    client's. Under the fast protocol the server bounds the body the same way itself; this
    bound is the one uvicorn's stock protocol has. Without it, a client sending a byte a
    second would hold its connection and its part of the body for as long as it liked, and
    four such clients would hold every permit of the process.
    """
    global _large_reads
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline) as bound:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            body: bytes = message.get("body", b"")
            if not message.get("more_body", False) and len(body) <= limit:
                return body  # the whole body in one message
            if len(body) <= _SMALL_BODY:
                # A body whose second part is its last: the common case of a body that
                # arrived in two reads, read without the semaphore (a small body still on its
                # way holds no permit and no more than its first part).
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientGone
                more: bytes = message.get("body", b"")
                if not message.get("more_body", False) and len(body) + len(more) <= limit:
                    return body + more if more else body
                body += more
            if _large_reads is None:
                _large_reads = asyncio.Semaphore(_LARGE_READS)
            waited = loop.time()
            bound.reschedule(None)
            async with _large_reads:
                bound.reschedule(deadline + loop.time() - waited)
                buffer = bytearray(body)
                del body
                while len(buffer) <= limit and message.get("more_body", False):
                    message = await receive()
                    if message["type"] != "http.request":
                        raise ClientGone
                    buffer += message.get("body", b"")
                if len(buffer) > limit:
                    del buffer  # before the 413 is sent and the rest of the body drained
                    raise too_large(limit)
                return bytes(buffer)
    except TimeoutError:
        raise HTTPProblem(
            408, "request-timeout", f"the request body did not arrive within {timeout:g} s"
        ) from None


def too_large(limit: int) -> HTTPProblem:
    detail = f"the body is larger than the limit of {limit} bytes"
    return HTTPProblem(413, "payload-too-large", detail, limit=limit)


def parse_json(body: bytes, max_depth: int) -> Any:
    """Strict JSON: 400 if malformed, 422 if well-formed but unstorable (NaN, lone surrogate,
    nesting deeper than `max_depth`)."""
    if not body:
        raise HTTPProblem(400, "invalid-json", "the request body is empty")
    try:
        check_depth(body, max_depth)
    except JSONError as exc:
        raise _unsupported(exc) from None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _refused(body, exc) from None
    try:
        check_duplicate_keys(body, doc)
    except JSONError as exc:
        raise _unsupported(exc) from None
    return doc


#: Bodies from this size on are parsed by `parse_large_json`. A smaller one holds the event
#: loop for a few milliseconds at most, whatever its shape (docs/benchmarks.md#large-json-bodies).
LARGE_JSON = 64 * 1024


async def parse_large_json(body: bytes, max_depth: int, max_containers: int) -> Any:
    """`parse_json`, with the same answers, in steps between which the event loop runs.

    A body of up to ``max_payload_bytes`` made of many small containers takes tens of
    milliseconds to check and parse: checked for depth a window at a time, then parsed in one
    step (orjson cannot be interrupted) with the collector paused, then checked for duplicate
    keys in another. The step orjson takes grows with the arrays and objects it builds, so a
    body with more than `max_containers` of them is refused (422) before it: counted as its
    ``[`` and ``{`` bytes (at C speed, strings included, so never fewer than there are).
    """
    if len(body) < LARGE_JSON:
        return parse_json(body, max_depth)
    containers = body.count(b"[") + body.count(b"{")
    if containers > max_containers:
        detail = (
            f"the JSON holds more than {max_containers} arrays and objects"
            f" ({containers} '[' and '{{'); SPILLWAY_MAX_JSON_CONTAINERS bounds them"
        )
        raise HTTPProblem(422, "unsupported-json", detail)
    try:
        for _ in check_depth_in_steps(body, max_depth):
            await asyncio.sleep(0)
    except JSONError as exc:
        raise _unsupported(exc) from None
    try:
        with _collector_paused():
            doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = exc
    else:
        await asyncio.sleep(0)
        try:
            check_duplicate_keys(body, doc)
        except JSONError as exc:
            raise _unsupported(exc) from None
        return doc
    await asyncio.sleep(0)
    with _collector_paused():
        raise _refused(body, error)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while a large document is built.

    Each collection the allocations trigger walks the containers built so far, so parsing
    hundreds of thousands of them took twice as long with the collector on
    (docs/benchmarks.md#large-json-bodies). What the pause defers is collected once, later.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _refused(body: bytes, error: orjson.JSONDecodeError) -> HTTPProblem:
    """Why orjson refused the body: 422 for JSON it will not store (Python's parser takes
    NaN, Infinity and lone surrogates, so what it parses is not malformed), else 400."""
    try:
        json.loads(body)
    except ValueError:
        return HTTPProblem(400, "invalid-json", f"malformed JSON: {error}")
    return HTTPProblem(
        422, "unsupported-json", "JSON with NaN, Infinity or a lone surrogate cannot be stored"
    )


def _unsupported(exc: JSONError) -> HTTPProblem:
    return HTTPProblem(422, "unsupported-json", str(exc))
