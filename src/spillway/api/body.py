"""A request body as the accept routes read it: bounded in size and time, then strict JSON.

`check_headers` refuses a wrong media type or a declared size over the limit before anything
is read; `read_body` reads an ASGI body, refused as soon as it passes the limit or stalls;
`parse_json` accepts only JSON Spillway can store unchanged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from spillway.api.problems import HTTPProblem
from spillway.codec import JSONError, check_depth, check_duplicate_keys

__all__ = [
    "ClientGone",
    "Receive",
    "Scope",
    "check_headers",
    "parse_json",
    "read_body",
    "too_large",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

_JSON = b"application/json"


class ClientGone(Exception):
    """The client disconnected before its request body arrived; nothing to answer."""


def check_headers(scope: Scope, limit: int) -> int | None:
    """Refuse a wrong media type or a declared size over the limit before reading anything."""
    content_type = content_length = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            content_length = value
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media != _JSON and not media.endswith(b"+json"):
        shown = media.decode("latin-1") or "none"
        raise HTTPProblem(415, "unsupported-media-type", f"send application/json, not {shown}")
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
    """The request body, refused with 413 as soon as more than `limit` bytes have arrived.

    A body that needs the large-read path must arrive within `timeout` seconds of taking its
    permit, or it is refused with 408: without the bound, four clients that stop sending
    mid-body would hold every permit of the process for as long as they keep their
    connections open, and every large request after them would wait with them.
    """
    global _large_reads
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False) and len(body) <= limit:
        return body  # the whole body in one message
    if len(body) <= _SMALL_BODY:
        # A body whose second part is its last: the common case of a body that arrived in
        # two reads, read without the semaphore (and without a timer: a small body
        # still on its way holds no permit and no more than its first part).
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        more: bytes = message.get("body", b"")
        if not message.get("more_body", False) and len(body) + len(more) <= limit:
            return body + more if more else body
        body += more
    if _large_reads is None:
        _large_reads = asyncio.Semaphore(_LARGE_READS)
    async with _large_reads:
        buffer = bytearray(body)
        del body
        try:
            async with asyncio.timeout(timeout):
                while len(buffer) <= limit and message.get("more_body", False):
                    message = await receive()
                    if message["type"] != "http.request":
                        raise ClientGone
                    buffer += message.get("body", b"")
        except TimeoutError:
            del buffer
            raise HTTPProblem(
                408, "request-timeout", f"the request body did not arrive within {timeout:g} s"
            ) from None
        if len(buffer) > limit:
            del buffer  # before the 413 is sent and the rest of the body drained
            raise too_large(limit)
        return bytes(buffer)


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
        raise HTTPProblem(422, "unsupported-json", str(exc)) from None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = exc
    else:
        try:
            check_duplicate_keys(body, doc)
        except JSONError as exc:
            raise HTTPProblem(422, "unsupported-json", str(exc)) from None
        return doc
    # Only on the error path: Python's parser accepts NaN, Infinity and lone surrogates, so
    # what it parses is JSON we refuse to store, not malformed JSON.
    try:
        json.loads(body)
    except ValueError:
        raise HTTPProblem(400, "invalid-json", f"malformed JSON: {error}") from None
    raise HTTPProblem(
        422, "unsupported-json", "JSON with NaN, Infinity or a lone surrogate cannot be stored"
    )
