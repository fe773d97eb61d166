"""The accept routes: ``POST /tasks``, ``POST /process`` and ``POST /tasks/batch``.

`Accept.answer` is the one core every entrance calls: given the request's scope (headers and
caller) and its whole body, it checks, parses and validates the task(s), starts their write
(`spillway.broker.accept`) and returns the answer, or its future while Redis writes. The
entrances only differ in how the body arrives:

* the fast protocol (`spillway.api.uvicorn_fast`) reads a small body itself and calls the
  handler `Accept.direct_route` gives it (the application's ``direct_route``): `answer`;
* through ASGI, `Accept.handle` checks the headers before it reads the body, bounded in size
  and time (`read_body`), then calls `answer` (`SpillwayAPI` routes the accept paths there
  before FastAPI's routing, whose machinery costs more than accepting a task);
* the FastAPI routes of `spillway.api.routes`, kept for the OpenAPI document, call `handle`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from pydantic import ValidationError

from spillway import metrics
from spillway.api.auth import CALLER, Auth
from spillway.api.body import Receive, Scope, check_headers, parse_json, read_body, too_large
from spillway.api.browsers import API_HEADERS
from spillway.api.problems import HTTPProblem, Rendered, describe, render
from spillway.api.schemas import BatchItem, TaskSubmission
from spillway.app import Spillway
from spillway.broker import AcceptRequest
from spillway.codec import ArrayItems, JSONError
from spillway.errors import SpillwayError
from spillway.records import EnqueueResult

__all__ = ["Accept", "Answer", "route_path"]

#: An accept route's answer: now (a refusal), or its future while the task is written.
Answer = Rendered | asyncio.Future[Rendered]

_JSON = b"application/json"
_TASK_LOC = ("body", "payload")
_PROCESS_LOC = ("body",)
# How long a batch holds the event loop before it lets other requests run.
_TURN = 0.005


class Accept:
    """The accept routes of one application."""

    def __init__(self, app: Spillway, auth: Auth) -> None:
        self.app = app
        self.auth = auth
        s = app.settings
        self.max_depth = s.max_json_depth
        self.default_type = s.default_task_type
        self.body_timeout = s.body_timeout
        #: The body limit of each route.
        self.limits = {"/tasks": s.max_payload_bytes, "/tasks/batch": s.max_batch_bytes}
        self.batch_items = ArrayItems("tasks", s.max_json_depth)
        if self.default_type is not None:
            self.limits["/process"] = s.max_payload_bytes

    def direct_route(self, scope: Scope) -> Callable[[Scope, bytes], Answer] | None:
        """`answer`, for an accept request a server reads the small body of itself (the fast
        protocol's direct routes). A request its headers refuse is left to ASGI, which answers
        it before reading the body."""
        path = route_path(scope)
        if path not in self.limits:
            return None
        try:
            self.auth.admit(scope, path)
        except HTTPProblem:
            return None
        return self.answer

    async def handle(self, path: str, scope: Scope, receive: Receive) -> Rendered:
        """Read the body of an ASGI request (`ClientGone` if the client left first), then
        `answer`. A wrong media type or a declared size over the limit is refused before
        anything is read."""
        limit = self.limits[path]
        started = time.perf_counter()
        try:
            _, length = _check_request(path, scope, limit)
            body = await read_body(receive, limit, length, self.body_timeout)
        except (HTTPProblem, SpillwayError) as exc:
            return _finish(path, started, render(exc))
        answer = self.answer(scope, body)
        return await answer if isinstance(answer, asyncio.Future) else answer

    def answer(self, scope: Scope, body: bytes) -> Answer:
        """The answer to an accept request with its whole body: at once when it is refused,
        else the future of the answer once Redis has written (or refused) its task(s)."""
        started = time.perf_counter()
        path = route_path(scope)
        loc = _PROCESS_LOC if path == "/process" else _TASK_LOC
        try:
            limit = self.limits[path]
            key, _ = _check_request(path, scope, limit)
            if len(body) > limit:
                raise too_large(limit)
            if path == "/tasks/batch":
                return asyncio.ensure_future(self._batch(scope, body, started))
            doc = parse_json(body, self.max_depth)
            request = self._task(path, key, doc)
        except (HTTPProblem, SpillwayError) as exc:
            return _finish(path, started, render(exc, body_loc=loc))
        answer: asyncio.Future[Rendered] = asyncio.get_running_loop().create_future()

        def written(task_id: asyncio.Future[str]) -> None:
            if task_id.cancelled():
                answer.cancel()
                return
            error = task_id.exception()
            if error is None:
                rendered = _accepted(request, task_id.result(), scope)
            else:
                rendered = render(error, body_loc=loc)
            answer.set_result(_finish(path, started, rendered))

        self.app.broker.accepts.accept(request).add_done_callback(written)
        return answer

    def _task(self, path: str, key: str | None, doc: Any) -> AcceptRequest:
        """The task of a ``POST /tasks`` body, or of a ``POST /process`` body (the payload of
        the default type)."""
        accepts = self.app.broker.accepts
        if path == "/process":
            task = self.app.resolve(self.default_type or "")
            return accepts.prepare(task, doc, idempotency_key=key)
        try:
            sub = TaskSubmission.model_validate(doc, strict=True)
        except ValidationError as exc:
            raise _invalid(exc, ("body",)) from None
        return self._prepare(sub, key)

    def _prepare(self, sub: TaskSubmission, key: str | None) -> AcceptRequest:
        """The task a submission (or a batch item) describes, validated."""
        return self.app.broker.accepts.prepare(
            self.app.resolve(sub.type),
            sub.payload,
            idempotency_key=key,
            delay=sub.delay_s,
            max_retries=sub.max_retries,
            timeout=sub.timeout_s,
        )

    async def _batch(self, scope: Scope, body: bytes, started: float) -> Rendered:
        """Up to ``max_batch`` tasks written in one round trip; each succeeds or fails alone."""
        caller = scope.get(CALLER, "")
        try:
            results: list[EnqueueResult | None] = []
            requests: list[tuple[int, AcceptRequest]] = []
            async for i, item in self._batch_items(body):
                try:
                    request = self._batch_item(i, item, caller)
                except (HTTPProblem, SpillwayError) as exc:
                    results.append(EnqueueResult(task_id=None, error=exc))
                    continue
                requests.append((len(results), request))
                results.append(None)
            if requests:
                written = await self.app.broker.accepts.write([r for _, r in requests])
                for (i, request), result in zip(requests, written, strict=True):
                    results[i] = result
                    if result.ok:
                        metrics.task_accepted(request.type)
        except (HTTPProblem, SpillwayError) as exc:
            return _finish("/tasks/batch", started, render(exc))
        done = [r for r in results if r is not None]
        accepted = sum(1 for r in done if r.ok)
        body = orjson.dumps(
            {
                "results": [_item_result(i, r) for i, r in enumerate(done)],
                "accepted": accepted,
                "rejected": len(done) - accepted,
            }
        )
        return _finish("/tasks/batch", started, (200, _json_headers(body), body))

    async def _batch_items(self, body: bytes) -> AsyncIterator[tuple[int, Any]]:
        """The tasks of a batch body, parsed one at a time, the event loop running in between.
        Each is dropped once validated: a million parsed containers kept alive would make the
        garbage collector's full passes hold the loop.

        Each task is found (`ArrayItems`) within ``max_payload_bytes``, the limit of a
        ``POST /tasks`` body, and the count is checked before the next one is parsed, so no
        body the limits allow parses for longer than one task does (docs/security.md). A body
        not of the plain ``{"tasks": [...]}`` shape is parsed whole if it is no larger than a
        task, for the precise answer; a larger one is refused.
        """
        settings = self.app.settings
        limit = settings.max_payload_bytes
        spans = self.batch_items.items(body, settings.max_batch, limit)
        count = 0
        turn = _Turns()
        try:
            if spans is not None:
                for start, end in spans:
                    if count == settings.max_batch:
                        raise _batch_count(settings.max_batch)
                    await turn.maybe()
                    yield count, parse_json(body[start:end], self.max_depth - 2)
                    count += 1
                if not count:
                    raise _batch_count(settings.max_batch)
                return
        except JSONError as exc:
            if len(body) > limit:
                detail = f'a batch over {limit} bytes must be a plain {{"tasks": [...]}}: {exc}'
                raise HTTPProblem(400, "invalid-json", detail) from None
            if count:  # tasks already given out: the whole body only names the problem
                _batch_items(parse_json(body, self.max_depth), settings.max_batch)
                raise HTTPProblem(400, "invalid-json", str(exc)) from None
        if len(body) > limit:
            raise HTTPProblem(400, "invalid-json", 'the body must be {"tasks": [...]}')
        for i, item in enumerate(
            _batch_items(parse_json(body, self.max_depth), settings.max_batch)
        ):
            yield i, item

    def _batch_item(self, i: int, item: Any, caller: str) -> AcceptRequest:
        try:
            sub = BatchItem.model_validate(item, strict=True)
        except ValidationError as exc:
            raise _invalid(exc, ("body", "tasks", i)) from None
        key = f"{caller}:{sub.idempotency_key}" if sub.idempotency_key is not None else None
        return self._prepare(sub, key)


def _finish(path: str, started: float, rendered: Rendered) -> Rendered:
    """An accept route's answer, counted, with its security headers and the close it may need."""
    status, headers, body = rendered
    metrics.accept_answered(path, status, body, time.perf_counter() - started)
    headers += API_HEADERS  # every rendered answer's header list is its own
    if status in (408, 413):
        # The rest of the body is not read, so the connection cannot carry another request:
        # say so. The server reads on and drops what the client still sends before it closes,
        # so the client gets this answer rather than a reset (the fast protocol's lingering close).
        headers.append((b"connection", b"close"))
    return rendered


def route_path(scope: Scope) -> str:
    """The path within the application (without a mount's root path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _check_request(path: str, scope: Scope, limit: int) -> tuple[str | None, int | None]:
    """The scoped idempotency key (batches carry theirs per task) and the declared body size,
    checked from the headers alone."""
    key = None if path == "/tasks/batch" else _request_key(scope, scope.get(CALLER, ""))
    return key, check_headers(scope, limit)


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
        raise _batch_count(max_batch)
    return items


def _batch_count(max_batch: int) -> HTTPProblem:
    return HTTPProblem(
        422,
        "request-invalid",
        f"send 1 to {max_batch} tasks per batch",
        errors=[{"loc": ["body", "tasks"], "msg": f"1 to {max_batch} tasks", "type": "too_long"}],
    )


class _Turns:
    """Lets the event loop run once this coroutine has held it for `_TURN` seconds."""

    def __init__(self) -> None:
        self.since = time.perf_counter()

    async def maybe(self) -> None:
        if time.perf_counter() - self.since > _TURN:
            await asyncio.sleep(0)
            self.since = time.perf_counter()


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
