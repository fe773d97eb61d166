"""The ceiling of the HTTP accept benchmark: the server Spillway runs, answering 202 with no work.

A bare ASGI application served by `spillway.api.serve.server` (the same uvicorn options and
process count as Spillway's API): it reads the request body and sends the same 202 answer
Spillway sends (same headers, same size), without parsing, validating or writing anything.
`direct` is the same application with its POSTs answered by the protocol, for the analysis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]

_ID = "0" * 32
_BODY = b'{"task_id":"' + _ID.encode() + b'","status":"queued"}'
_ACCEPTED = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"location", f"/tasks/{_ID}".encode()),
]


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] != "POST":  # the benchmark's readiness probe: GET /openapi.json
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    message = await receive()
    while message.get("more_body", False):
        message = await receive()
    await send({"type": "http.response.start", "status": 202, "headers": _ACCEPTED})
    await send({"type": "http.response.body", "body": _BODY})


async def _direct_answer(
    scope: Message, body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return 202, _ACCEPTED, _BODY


class _DirectCeiling:
    """The ceiling with its POSTs answered as a direct route (`spillway.api.uvicorn_fast`): by the
    protocol itself, without the ASGI cycle, as Spillway answers its accept routes."""

    async def __call__(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        await app(scope, receive, send)

    def direct_route(
        self, scope: Message
    ) -> Callable[[Message, bytes], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]]:
        return _direct_answer


direct = _DirectCeiling()
