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
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from pydantic import ValidationError

from spillway import metrics
from spillway.api.auth import ADMIN, ANONYMOUS, CALLER, Auth
from spillway.api.body import (
    LARGE_JSON,
    Receive,
    Scope,
    check_headers,
    parse_json,
    parse_large_json,
    read_body,
    too_large,
)
from spillway.api.headers import request_headers
from spillway.api.problems import HTTPProblem, Rendered, describe, render
from spillway.api.schemas import BatchItem, TaskSubmission
from spillway.app import Spillway
from spillway.broker import AcceptRequest
from spillway.codec import ArrayItems, ContainerLimit, JSONError
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
_UNPARSED: Any = object()
_TENANT = re.compile(rb"[A-Za-z0-9_.:@-]{1,64}")


class Accept:
    """The accept routes of one application."""

    def __init__(self, app: Spillway, auth: Auth) -> None:
        self.app = app
        self.auth = auth
        s = app.settings
        self.max_depth = s.max_json_depth
        self.max_containers = s.max_json_containers
        self.default_type = s.default_task_type
        self.body_timeout = s.body_timeout
        #: The body limit of each route.
        self.limits = {"/tasks": s.max_payload_bytes, "/tasks/batch": s.max_batch_bytes}
        self.batch_items = ArrayItems("tasks", s.max_json_depth)
        if self.default_type is not None:
            self.limits["/process"] = s.max_payload_bytes
        #: Whose turn a task waits for (docs/architecture.md#callers): read only when callers
        #: are tracked; the tenant header's name as the request's header dict keys it.
        self.tracks_callers = s.tracks_callers
        self.tenant_header = None if s.tenant_header is None else s.tenant_header.lower().encode()

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
            return _finish(path, started, render(exc, admin=scope.get(ADMIN, False)))
        answer = self.answer(scope, body)
        return await answer if isinstance(answer, asyncio.Future) else answer

    def answer(
        self, scope: Scope, body: bytes, doc: Any = _UNPARSED, started: float | None = None
    ) -> Answer:
        """The answer to an accept request with its whole body: at once when it is refused,
        else the future of the answer once Redis has written (or refused) its task(s).
        (`_answer_large` passes the document of a large body it parsed, and when it began.)"""
        started = time.perf_counter() if started is None else started
        path = route_path(scope)
        loc = _PROCESS_LOC if path == "/process" else _TASK_LOC
        try:
            limit = self.limits[path]
            key, _ = _check_request(path, scope, limit)
            if len(body) > limit:
                raise too_large(limit)
            if path == "/tasks/batch":
                return asyncio.ensure_future(self._batch(scope, body, started))
            if doc is _UNPARSED:
                if len(body) >= LARGE_JSON:
                    return asyncio.ensure_future(self._answer_large(scope, body, started))
                doc = parse_json(body, self.max_depth)
            caller = scope.get(CALLER, ANONYMOUS)  # `_owner`, inline on the accept path
            owner = "" if caller == ANONYMOUS else caller
            turn = self._turn(scope, owner) if self.tracks_callers else ""
            request = self._task(path, key, doc, owner, turn)
        except (HTTPProblem, SpillwayError) as exc:
            return _finish(path, started, render(exc, body_loc=loc, admin=scope.get(ADMIN, False)))
        accepts = self.app.broker.accepts
        answer: asyncio.Future[Rendered] = accepts.loops.get().create_future()
        tracing = self.app.tracing
        span = None
        if tracing.enabled:  # the request's trace goes on with the task (spillway.tracing)
            span = tracing.send(request.queue, scope["headers"])
            request = tracing.carry(span, request)

        def written(task_id: asyncio.Future[str]) -> None:
            if task_id.cancelled():
                answer.cancel()
                if span is not None:
                    tracing.sent(span, asyncio.CancelledError())
                return
            error = task_id.exception()
            if span is not None:
                tracing.sent(span, error, "" if error else task_id.result())
            if error is None:
                rendered = _accepted(request, task_id.result(), scope)
                # Empty unless a lane is above SPILLWAY_SLOW_DOWN_AT: one test per 202.
                if accepts.slow_down and (advice := accepts.advice(request.queue)):
                    rendered[1].append((b"retry-after", advice))
            else:
                rendered = render(error, body_loc=loc, admin=scope.get(ADMIN, False))
            answer.set_result(_finish(path, started, rendered))

        accepts.accept(request).add_done_callback(written)
        return answer

    async def _answer_large(self, scope: Scope, body: bytes, started: float) -> Rendered:
        """`answer` for a body too large to parse in one turn of the event loop: parsed in
        steps (`parse_large_json`), then answered as a small one."""
        try:
            doc = await parse_large_json(body, self.max_depth, self.max_containers)
        except HTTPProblem as exc:
            path = route_path(scope)
            loc = _PROCESS_LOC if path == "/process" else _TASK_LOC
            rendered = render(exc, body_loc=loc, admin=scope.get(ADMIN, False))
            return _finish(path, started, rendered)
        await asyncio.sleep(0)
        answer = self.answer(scope, body, doc, started)
        await asyncio.sleep(0)
        del doc  # in a turn of its own: freeing a large document takes milliseconds too
        return await answer if isinstance(answer, asyncio.Future) else answer

    def _turn(self, scope: Scope, owner: str) -> str:
        """The caller a task waits its turn as: the tenant header's value when one is
        configured and sent, else the API key's scope ('' in open mode: no one's)."""
        if self.tenant_header is None:
            return owner
        raw = request_headers(scope).get(self.tenant_header)
        if raw is None:
            return owner
        if sum(1 for name, _ in scope["headers"] if name == self.tenant_header) > 1:
            # A gateway reading one and this check the other could disagree on who it is.
            raise HTTPProblem(400, "bad-request", "the tenant header is sent more than once")
        if not _TENANT.fullmatch(raw):
            detail = "the tenant header must be 1 to 64 of A-Z a-z 0-9 _ . : @ -"
            raise HTTPProblem(400, "bad-request", detail)
        return raw.decode("ascii")

    def _task(
        self, path: str, key: str | None, doc: Any, owner: str, turn: str = ""
    ) -> AcceptRequest:
        """The task of a ``POST /tasks`` body, or of a ``POST /process`` body (the payload of
        the default type)."""
        accepts = self.app.broker.accepts
        if path == "/process":
            task = self.app.resolve(self.default_type or "")
            return accepts.prepare(task, doc, idempotency_key=key, owner=owner, caller=turn)
        try:
            sub = TaskSubmission.model_validate(doc, strict=True)
        except ValidationError as exc:
            raise _invalid(exc, ("body",)) from None
        return self._prepare(sub, key, owner, turn)

    def _prepare(
        self, sub: TaskSubmission, key: str | None, owner: str, turn: str = ""
    ) -> AcceptRequest:
        """The task a submission (or a batch item) describes, validated."""
        return self.app.broker.accepts.prepare(
            self.app.resolve(sub.type),
            sub.payload,
            idempotency_key=key,
            delay=sub.delay_s,
            max_retries=sub.max_retries,
            timeout=sub.timeout_s,
            owner=owner,
            priority=sub.priority,
            expires=sub.expires_s,
            caller=turn,
            callback_url=sub.callback_url,
        )

    async def _batch(self, scope: Scope, body: bytes, started: float) -> Rendered:
        """Up to ``max_batch`` tasks written in one round trip; each succeeds or fails alone."""
        caller = scope.get(CALLER, "")
        owner, admin = _owner(scope), scope.get(ADMIN, False)
        try:
            turn = self._turn(scope, owner) if self.tracks_callers else ""
            results: list[EnqueueResult | None] = []
            requests: list[tuple[int, AcceptRequest]] = []
            async for i, item in self._batch_items(body):
                try:
                    request = self._batch_item(i, item, caller, owner, turn)
                except (HTTPProblem, SpillwayError) as exc:
                    results.append(EnqueueResult(task_id=None, error=exc))
                    continue
                requests.append((len(results), request))
                results.append(None)
            if requests:
                written = await self._write_batch([r for _, r in requests], scope)
                for (i, request), result in zip(requests, written, strict=True):
                    results[i] = result
                    if result.ok:
                        metrics.task_accepted(request.type)
        except (HTTPProblem, SpillwayError) as exc:
            return _finish("/tasks/batch", started, render(exc, admin=admin))
        done = [r for r in results if r is not None]
        accepted = sum(1 for r in done if r.ok)
        body = orjson.dumps(
            {
                "results": [_item_result(i, r, admin) for i, r in enumerate(done)],
                "accepted": accepted,
                "rejected": len(done) - accepted,
            }
        )
        return _finish("/tasks/batch", started, (200, _json_headers(body), body))

    async def _write_batch(
        self, requests: list[AcceptRequest], scope: Scope
    ) -> list[EnqueueResult]:
        """Write a batch's valid tasks, under one send span when tracing is on."""
        tracing = self.app.tracing
        if not tracing.enabled:
            return await self.app.broker.accepts.write(requests)
        span = tracing.send("", scope["headers"], count=len(requests))
        try:
            written = await self.app.broker.accepts.write(
                [tracing.carry(span, r) for r in requests]
            )
        except BaseException as exc:
            tracing.sent(span, exc)
            raise
        refused = sum(1 for w in written if not w.ok)
        tracing.sent(span, SpillwayError(f"{refused} refused") if refused else None)
        return written

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
        spans = self.batch_items.items(body, settings.max_batch, limit, self.max_containers)
        count = 0
        turn = _Turns()
        try:
            if spans is not None:
                for start, end in spans:
                    if count == settings.max_batch:
                        raise _batch_count(settings.max_batch)
                    await turn.maybe()
                    item, depth = body[start:end], self.max_depth - 2
                    if len(item) < LARGE_JSON:
                        yield count, parse_json(item, depth)
                    else:
                        yield count, await parse_large_json(item, depth, self.max_containers)
                    count += 1
                if not count:
                    raise _batch_count(settings.max_batch)
                return
        except ContainerLimit as exc:
            detail = f"{exc}; SPILLWAY_MAX_JSON_CONTAINERS bounds them"
            raise HTTPProblem(422, "unsupported-json", detail) from None
        except JSONError as exc:
            if len(body) > limit:
                detail = f'a batch over {limit} bytes must be a plain {{"tasks": [...]}}: {exc}'
                raise HTTPProblem(400, "invalid-json", detail) from None
            if count:  # tasks already given out: the whole body only names the problem
                whole = await parse_large_json(body, self.max_depth, self.max_containers)
                _batch_items(whole, settings.max_batch)
                raise HTTPProblem(400, "invalid-json", str(exc)) from None
        if len(body) > limit:
            raise HTTPProblem(400, "invalid-json", 'the body must be {"tasks": [...]}')
        whole = await parse_large_json(body, self.max_depth, self.max_containers)
        for i, item in enumerate(_batch_items(whole, settings.max_batch)):
            yield i, item

    def _batch_item(self, i: int, item: Any, caller: str, owner: str, turn: str) -> AcceptRequest:
        try:
            sub = BatchItem.model_validate(item, strict=True)
        except ValidationError as exc:
            raise _invalid(exc, ("body", "tasks", i)) from None
        key = f"{caller}:{sub.idempotency_key}" if sub.idempotency_key is not None else None
        return self._prepare(sub, key, owner, turn)


def _finish(path: str, started: float, rendered: Rendered) -> Rendered:
    """An accept route's answer, counted, with the close it may need. (Its sender adds the
    security headers: the fast protocol its pre-serialised `SpillwayAPI.direct_headers`.)"""
    status, headers, body = rendered
    metrics.accept_answered(path, status, body, time.perf_counter() - started)
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
    found = request_headers(scope)
    raw = found.get(b"idempotency-key")
    batch = path == "/tasks/batch"  # its tasks carry their own keys
    key = None if raw is None or batch else _request_key(raw, scope.get(CALLER, ""))
    return key, check_headers(found, limit)


def _owner(scope: Scope) -> str:
    """Who a new task belongs to: the caller's scope when keys are on, else no one ('')."""
    caller: str = scope.get(CALLER, ANONYMOUS)
    return "" if caller == ANONYMOUS else caller


def _request_key(raw: bytes, caller: str) -> str:
    """The scoped idempotency key of an ``Idempotency-Key`` header, checked before the body."""
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


def _item_result(i: int, result: EnqueueResult, admin: bool) -> dict[str, Any]:
    if result.error is None:
        return {"task_id": result.task_id, "status": "queued", "duplicate": result.duplicate}
    problem = describe(result.error, body_loc=("body", "tasks", i, "payload"), admin=admin)
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
