"""The accept path: read a bounded body, parse strict JSON, validate, write, answer 202.

This is the product's hot path, so it works on the raw ASGI request instead of FastAPI's
generic route machinery: headers are checked before the body is read, the body is read
chunk by chunk and refused as soon as it passes the limit, and the write goes through
`Broker.accept`, which coalesces the tasks of concurrent requests into one pipeline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from pydantic import ValidationError

from spillway import metrics
from spillway.api.problems import HTTPProblem, Rendered, describe, render
from spillway.api.schemas import BatchItem, TaskSubmission
from spillway.app import Spillway
from spillway.broker import AcceptReply, AcceptRequest
from spillway.codec import JSONError, check_depth, check_duplicate_keys
from spillway.errors import SpillwayError
from spillway.records import EnqueueResult

__all__ = ["Accept", "Answer", "ClientGone", "Receive", "Scope", "Then"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
#: What a direct route does with its answer before the server writes it.
Then = Callable[[Rendered], Rendered]
#: A direct route's answer: now, or once the task is written.
Answer = Rendered | asyncio.Future[Rendered]

_JSON = b"application/json"


class ClientGone(Exception):
    """The client disconnected before its request body arrived; nothing to answer."""


class Accept:
    """``POST /tasks``, ``POST /process`` and ``POST /tasks/batch`` for one application."""

    def __init__(self, app: Spillway) -> None:
        self.app = app
        s = app.settings
        self.max_body = s.max_payload_bytes
        self.max_batch_body = s.max_batch_bytes
        self.max_batch = s.max_batch
        self.max_depth = s.max_json_depth
        self.default_type = s.default_task_type
        self.body_timeout = s.body_timeout

    async def submit(self, scope: Scope, receive: Receive, caller: str) -> Rendered:
        """One task from ``{"type": ..., "payload": ...}``."""
        try:
            return await self._submit(scope, receive, caller)
        except (HTTPProblem, SpillwayError) as exc:
            return render(exc)

    async def process(self, scope: Scope, receive: Receive, caller: str) -> Rendered:
        """The seed's route: the body is the payload of the default task type."""
        try:
            return await self._process(scope, receive, caller)
        except (HTTPProblem, SpillwayError) as exc:
            return render(exc, body_loc=("body",))

    async def batch(self, scope: Scope, receive: Receive, caller: str) -> Rendered:
        """Up to ``max_batch`` tasks written in one round trip; each succeeds or fails alone."""
        try:
            return await self._batch(scope, receive, caller)
        except (HTTPProblem, SpillwayError) as exc:
            return render(exc)

    async def _submit(self, scope: Scope, receive: Receive, caller: str) -> Rendered:
        key = _request_key(scope, caller)
        doc = await self._read_json(scope, receive, self.max_body)
        request = self._task(doc, key)
        return _accepted(request, await self.app.enqueue_prepared(request), scope)

    async def _process(self, scope: Scope, receive: Receive, caller: str) -> Rendered:
        key = _request_key(scope, caller)
        payload = await self._read_json(scope, receive, self.max_body)
        request = self._default_task(payload, key)
        return _accepted(request, await self.app.enqueue_prepared(request), scope)

    def submit_soon(self, scope: Scope, body: bytes, caller: str, then: Then) -> Answer:
        """`submit` for a body already read, without a coroutine (`spillway.api.direct`): the
        answer, or its future while the task is written. `then` is applied to the answer."""
        return self._soon(scope, body, caller, then, self._task, ("body", "payload"))

    def process_soon(self, scope: Scope, body: bytes, caller: str, then: Then) -> Answer:
        """`process`, as `submit_soon` is `submit`."""
        return self._soon(scope, body, caller, then, self._default_task, ("body",))

    def _soon(
        self,
        scope: Scope,
        body: bytes,
        caller: str,
        then: Then,
        task: Callable[[Any, str | None], AcceptRequest],
        body_loc: tuple[str, ...],
    ) -> Answer:
        try:
            key = _request_key(scope, caller)
            _check_headers(scope, self.max_body)
            if len(body) > self.max_body:
                raise _too_large(self.max_body)
            request = task(parse_json(body, self.max_depth), key)
        except (HTTPProblem, SpillwayError) as exc:
            return then(render(exc, body_loc=body_loc))
        written = self.app.write_soon(request)
        answer: asyncio.Future[Rendered] = asyncio.get_running_loop().create_future()

        def done(written: asyncio.Future[AcceptReply]) -> None:
            if written.cancelled():
                answer.cancel()
                return
            try:
                task_id = self.app.accepted_id(request, written.result())
            except Exception as exc:
                answer.set_result(then(render(exc, body_loc=body_loc)))
            else:
                answer.set_result(then(_accepted(request, task_id, scope)))

        written.add_done_callback(done)
        return answer

    def _task(self, doc: Any, key: str | None) -> AcceptRequest:
        """The task of a ``POST /tasks`` body."""
        try:
            sub = TaskSubmission.model_validate(doc, strict=True)
        except ValidationError as exc:
            raise _invalid(exc, ("body",)) from None
        return self.app.prepare(
            sub.type,
            sub.payload,
            idempotency_key=key,
            delay=sub.delay_s,
            max_retries=sub.max_retries,
            timeout=sub.timeout_s,
        )

    def _default_task(self, payload: Any, key: str | None) -> AcceptRequest:
        """The task of a ``POST /process`` body: the payload of the default type."""
        # The route exists only when a default type is configured.
        return self.app.prepare(self.default_type or "", payload, idempotency_key=key)

    async def _batch(self, scope: Scope, receive: Receive, caller: str) -> Rendered:
        doc = await self._read_json(scope, receive, self.max_batch_body)
        items = _batch_items(doc, self.max_batch)
        results: list[EnqueueResult | None] = []
        requests: list[tuple[int, AcceptRequest]] = []
        for i, item in enumerate(items):
            try:
                request = self._prepare_item(i, item, caller)
            except (HTTPProblem, SpillwayError) as exc:
                results.append(EnqueueResult(task_id=None, error=exc))
                continue
            requests.append((len(results), request))
            results.append(None)
        done = await self.app.accept_prepared(results, requests)
        for i, request in requests:
            if done[i].ok:
                metrics.task_accepted(request.type)
        out = [_item_result(i, r) for i, r in enumerate(done)]
        accepted = sum(1 for r in done if r.ok)
        body = orjson.dumps(
            {"results": out, "accepted": accepted, "rejected": len(done) - accepted}
        )
        return 200, _json_headers(body), body

    def _prepare_item(self, i: int, item: Any, caller: str) -> AcceptRequest:
        try:
            sub = BatchItem.model_validate(item, strict=True)
        except ValidationError as exc:
            raise _invalid(exc, ("body", "tasks", i)) from None
        key = f"{caller}:{sub.idempotency_key}" if sub.idempotency_key is not None else None
        return self.app.prepare(
            sub.type,
            sub.payload,
            idempotency_key=key,
            delay=sub.delay_s,
            max_retries=sub.max_retries,
            timeout=sub.timeout_s,
        )

    async def _read_json(self, scope: Scope, receive: Receive, limit: int) -> Any:
        content_length = _check_headers(scope, limit)
        body = await read_body(receive, limit, content_length, self.body_timeout)
        return parse_json(body, self.max_depth)


def _check_headers(scope: Scope, limit: int) -> int | None:
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
# up to the limit before it is refused, and 50 concurrent 10 MB uploads must not cost 50 MB.
# Each read under way cost ~1.5 MB there (the buffer, its growth, the chunks): at 8 at a time
# the API grew 14-16 MB, at 4 7-10 MB, at 1 3-4 MB.
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
            raise _too_large(limit)
        return bytes(buffer)


def _too_large(limit: int) -> HTTPProblem:
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


def _request_key(scope: Scope, caller: str) -> str | None:
    """The scoped idempotency key from the ``Idempotency-Key`` header, checked before the body."""
    raw: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            raw = value
            break
    if raw is None:
        return None
    if len(raw) >= 2 and raw[:1] == raw[-1:] == b'"':
        raw = raw[1:-1]  # the IETF draft sends it as a quoted structured-field string
    if not 0 < len(raw) <= 255 or not all(0x20 <= b <= 0x7E for b in raw):
        detail = "Idempotency-Key must be 1 to 255 printable ASCII characters"
        raise HTTPProblem(400, "bad-request", detail)
    return f"{caller}:{raw.decode('ascii')}"


def _batch_items(doc: Any, max_batch: int) -> list[Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list):
        raise HTTPProblem(
            422,
            "request-invalid",
            'the body must be {"tasks": [...]}',
            errors=[
                {"loc": ["body", "tasks"], "msg": "a list of tasks is required", "type": "missing"}
            ],
        )
    extra = sorted(set(doc) - {"tasks"})
    if extra:
        raise HTTPProblem(
            422,
            "request-invalid",
            f"unknown field {extra[0]!r}",
            errors=[
                {
                    "loc": ["body", k],
                    "msg": "Extra inputs are not permitted",
                    "type": "extra_forbidden",
                }
                for k in extra
            ],
        )
    items: list[Any] = doc["tasks"]
    if not 1 <= len(items) <= max_batch:
        raise HTTPProblem(
            422,
            "request-invalid",
            f"send 1 to {max_batch} tasks per batch",
            errors=[
                {"loc": ["body", "tasks"], "msg": f"1 to {max_batch} tasks", "type": "too_long"}
            ],
        )
    return items


def _invalid(exc: ValidationError, root: tuple[str | int, ...]) -> HTTPProblem:
    errors = [
        {"loc": [*root, *e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    return HTTPProblem(422, "request-invalid", f"{where}: {first['msg']}", errors=errors)


def _item_result(i: int, result: EnqueueResult) -> dict[str, Any]:
    if result.error is None:
        return {"task_id": result.task_id, "status": "queued", "duplicate": result.duplicate}
    problem = describe(result.error, body_loc=("body", "tasks", i, "payload"))
    metrics.task_refused(str(problem.doc["type"]))
    return {"task_id": None, "status": "rejected", "duplicate": False, "error": problem.doc}


def _accepted(request: AcceptRequest, task_id: str, scope: Scope) -> Rendered:
    metrics.task_accepted(request.type)
    body = b'{"task_id":"' + task_id.encode() + b'","status":"queued"}'
    headers = _json_headers(body)
    headers.append((b"location", f"{scope.get('root_path', '')}/tasks/{task_id}".encode()))
    return 202, headers, body


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
