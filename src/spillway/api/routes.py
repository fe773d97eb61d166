"""The routes of the API besides the accept fast path: reading, waiting, cancelling, operations.

The accept routes are declared here too, for the OpenAPI document and for callers that reach
the FastAPI router directly; `SpillwayAPI` normally answers them before routing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import StringConstraints

from spillway import metrics
from spillway.api.accept import Accept
from spillway.api.auth import owner_filter
from spillway.api.problems import HTTPProblem
from spillway.api.schemas import (
    BatchResult,
    CancelRequest,
    CancelResult,
    DeadLetters,
    Health,
    ProblemDoc,
    QueueState,
    TaskAccepted,
    TaskResource,
    resource,
)
from spillway.app import Spillway
from spillway.bulk import CancelFilter
from spillway.errors import BrokerUnavailable, ResultTimeout, SpillwayError
from spillway.feed import follow
from spillway.records import QueueEvent, Stats, TaskRecord, TaskStatus

__all__ = [
    "MAX_WAIT_S",
    "add_accept_routes",
    "add_routes",
    "cancel_matching",
    "set_paused",
]

MAX_WAIT_S = 60.0
_STREAM_S = 300.0  # an event stream's longest life: the client reconnects with Last-Event-ID
_HEARTBEAT_S = 15.0
_SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
_QUEUE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ProblemDoc, "description": "A problem document."} for code in codes}


_ACCEPT_PROBLEMS = _problems(400, 401, 408, 413, 415, 422, 429, 503)
_LOCATION = {
    "Location": {"description": "The task's status resource.", "schema": {"type": "string"}}
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Same key and same body: the same task, enqueued once. Same key and "
    "another body: 422. Keys are scoped per API key and kept for a day.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[!-~]+$"},
}


def add_accept_routes(api: FastAPI, accept: Accept) -> None:
    def endpoint(path: str) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            status, headers, body = await accept.handle(path, request.scope, request.receive)
            out = Response(body, status_code=status)
            out.raw_headers = headers
            return out

        return serve

    def body(ref: str) -> dict[str, Any]:
        schema = {"$ref": f"#/components/schemas/{ref}"}
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    api.add_api_route(
        "/tasks",
        endpoint("/tasks"),
        operation_id="submitTask",
        methods=["POST"],
        status_code=202,
        tags=["tasks"],
        summary="Submit a task",
        response_model=TaskAccepted,
        responses={202: {"headers": _LOCATION}, **_ACCEPT_PROBLEMS},
        openapi_extra={"requestBody": body("NewTask"), "parameters": [_IDEMPOTENCY_KEY]},
        description="Validates the task, writes it durably to Redis, then answers 202 with its "
        "id. Nothing is enqueued when the answer is not 202, except a 503 of type "
        "`outcome-unknown`: Redis's connection broke after the write was sent, so the task may "
        "exist; that answer names its `task_id` for `GET /tasks/{task_id}`.",
    )
    api.add_api_route(
        "/tasks/batch",
        endpoint("/tasks/batch"),
        operation_id="submitBatch",
        methods=["POST"],
        status_code=200,
        tags=["tasks"],
        summary="Submit many tasks in one request",
        response_model=BatchResult,
        responses=_problems(400, 401, 408, 413, 415, 422, 503),
        openapi_extra={"requestBody": body("NewBatch")},
        description="Writes every valid task in one Redis round trip; each task is accepted or "
        "rejected on its own, and `results` follows the order of `tasks`.",
    )
    if "/process" in accept.limits:
        api.add_api_route(
            "/process",
            endpoint("/process"),
            operation_id="process",
            methods=["POST"],
            status_code=202,
            tags=["tasks"],
            summary="Submit a task of the default type",
            response_model=TaskAccepted,
            responses={202: {"headers": _LOCATION}, **_ACCEPT_PROBLEMS},
            openapi_extra={"requestBody": body("ProcessPayload"), "parameters": [_IDEMPOTENCY_KEY]},
            description="The seed design's route: the body is the payload of the default task "
            "type. Same contract as `POST /tasks`.",
        )


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(doc), status_code=status, media_type="application/json", headers=headers
    )


T = TypeVar("T")  # what an event stream's iterator gives: a task's records, a queue's events


async def sse(
    events: AsyncIterator[T],
    frame: Callable[[T], tuple[bytes, bytes, bytes]],
    pending: asyncio.Future[T] | None = None,
) -> AsyncIterator[bytes]:
    """Server-sent events, one for each item of `events` (`frame` gives its id, its event name
    and its data), with a comment line while nothing happens. `pending`: the first item,
    already asked for.

    The next item is awaited in a task of its own, so a heartbeat never cancels it. Redis
    failing mid-stream ends the stream (as does a task's record gone or unreadable); the
    client reconnects with its Last-Event-ID.
    """
    yield b"retry: 2000\n\n"  # reconnect after 2 s
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=_HEARTBEAT_S)
            if not done:
                yield b": keep-alive\n\n"
                continue
            try:
                item = pending.result()
            except (StopAsyncIteration, SpillwayError):
                return
            finally:
                pending = None
            yield b"id: %s\nevent: %s\ndata: %s\n\n" % frame(item)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await events.aclose()  # type: ignore[attr-defined]


def _task_frame(root: str) -> Callable[[tuple[str, TaskRecord]], tuple[bytes, bytes, bytes]]:
    """A task's event: its id, and its resource as `GET /tasks/{id}` answers it."""

    def frame(item: tuple[str, TaskRecord]) -> tuple[bytes, bytes, bytes]:
        return item[0].encode(), b"status", orjson.dumps(resource(item[1], root))

    return frame


def _queue_frame(event: QueueEvent) -> tuple[bytes, bytes, bytes]:
    """A queue's event: a change (`status`) or a notice of missed changes (`gap`)."""
    return event.event_id.encode(), b"gap" if event.gap else b"status", orjson.dumps(event.doc())


def _add_task_routes(api: FastAPI, app: Spillway) -> None:
    @api.get(
        "/tasks/{task_id}",
        operation_id="getTask",
        tags=["tasks"],
        summary="Read (or wait for) a task",
        response_model=TaskResource,
        responses=_problems(401, 404, 422, 503),
    )
    async def get_task(
        request: Request,
        task_id: str = Path(description="The id `POST /tasks` answered."),
        wait: float | None = Query(
            default=None,
            ge=0,
            le=MAX_WAIT_S,
            description="Seconds to wait for the task to finish; answers as soon as it does.",
        ),
    ) -> Response:
        owner = owner_filter(request.scope)
        if wait:
            try:
                record = await app.wait(task_id, wait, owner=owner)
            except ResultTimeout:
                record = await app.get(task_id, owner=owner)
        else:
            record = await app.get(task_id, owner=owner)
        return _json(resource(record, request.scope.get("root_path", "")))

    @api.get(
        "/tasks/{task_id}/events",
        operation_id="taskEvents",
        tags=["tasks"],
        summary="Follow a task's status changes (server-sent events)",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "The event stream."},
            **_problems(401, 404, 503),
        },
        description="A `text/event-stream` of `status` events, each the task's resource at a "
        "new status, with an id that grows along the task's life; the stream ends after the "
        "final one (or after five minutes: reconnect). Reconnecting with `Last-Event-ID` "
        "sends only what changed since. A comment line every 15 s keeps proxies from "
        "closing an idle stream.",
    )
    async def task_events(
        request: Request,
        task_id: str = Path(description="The id `POST /tasks` answered."),
        last_event_id: str | None = Header(default=None, alias="Last-Event-ID", max_length=24),
    ) -> StreamingResponse:
        owner = owner_filter(request.scope)
        await app.get(task_id, owner=owner)  # a 404 (or 503) before the stream starts
        root = request.scope.get("root_path", "")
        events = app.events(task_id, owner=owner, last_event_id=last_event_id, timeout=_STREAM_S)
        return StreamingResponse(
            sse(events, _task_frame(root)), media_type="text/event-stream", headers=_SSE_HEADERS
        )

    @api.delete(
        "/tasks/{task_id}",
        operation_id="cancelTask",
        tags=["tasks"],
        summary="Cancel a task, waiting or running",
        status_code=202,
        response_model=TaskResource,
        responses=_problems(401, 404, 409, 503),
        description="Always `202` with the task's status resource; its `status` says what "
        "happened. A task that has not started (queued, delayed, waiting for a retry) is "
        "`cancelled` at once and never runs. A running task answers `running` with "
        "`cancel_requested_at` set: its worker stops the run (an async handler is cancelled, "
        "a sync one sees `ctx.cancelled`) within a third of the visibility timeout, and the "
        "task then ends `cancelled`, whatever the run's outcome (`GET ?wait=` to see it end). "
        "A task that ended before the cancel got there is `409 task-not-cancellable`; "
        "another client's task is `404`.",
    )
    async def cancel_task(request: Request, task_id: str) -> Response:
        record = await app.cancel(task_id, owner=owner_filter(request.scope))
        return _json(resource(record, request.scope.get("root_path", "")), 202)


def _add_admin_routes(api: FastAPI, app: Spillway) -> None:
    @api.get(
        "/dlq",
        operation_id="listDeadLetters",
        tags=["dead letters"],
        summary="List dead-lettered tasks",
        response_model=DeadLetters,
        responses=_problems(401, 403, 422, 503),
    )
    async def list_dead_letters(
        queue: str | None = Query(default=None, pattern=_QUEUE_NAME),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> Response:
        dead = await app.dead_letters(queue, limit)
        return _json({"dead_letters": [d.model_dump(mode="json") for d in dead]})

    @api.post(
        "/dlq/{task_id}/replay",
        operation_id="replayDeadLetter",
        tags=["dead letters"],
        summary="Run a dead-lettered task again",
        status_code=202,
        response_model=TaskAccepted,
        responses={202: {"headers": _LOCATION}, **_problems(401, 403, 404, 503)},
    )
    async def replay_dead_letter(request: Request, task_id: str) -> Response:
        if not await app.replay(task_id):
            raise HTTPProblem(
                404, "task-not-found", f"no dead letter has task id {task_id!r}", task_id=task_id
            )
        location = f"{request.scope.get('root_path', '')}/tasks/{task_id}"
        return _json({"task_id": task_id, "status": "queued"}, 202, {"Location": location})

    @api.get(
        "/stats",
        operation_id="getStats",
        tags=["operations"],
        summary="Queue sizes, workers and outcome counts",
        response_model=Stats,
        responses=_problems(401, 403, 503),
    )
    async def stats() -> Response:
        return _json((await app.stats()).model_dump(mode="json"))

    @api.get(
        "/metrics",
        operation_id="metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, **_problems(401, 403)},
        description="Task events of this host's API processes (and of workers sharing their "
        "PROMETHEUS_MULTIPROC_DIR), and queue figures read from Redis now.",
    )
    async def prometheus_metrics() -> Response:
        try:
            figures: Stats | None = await app.stats()
        except BrokerUnavailable:
            figures = None
        return Response(metrics.render(figures), media_type=metrics.CONTENT_TYPE)

    @api.get(
        "/healthz",
        operation_id="healthz",
        tags=["operations"],
        summary="The process is alive (never touches Redis)",
        response_model=Health,
    )
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @api.get(
        "/readyz",
        operation_id="readyz",
        tags=["operations"],
        summary="Redis is reachable and usable",
        response_model=Health,
        responses=_problems(500, 503),
    )
    async def readyz() -> Response:
        await app.connect()
        await app.broker.core.ping()
        return _json({"status": "ready"})


async def set_paused(app: Spillway, queue: str, paused: bool) -> Response:
    """Pause or resume `queue`: the answer of the API's route and of the dashboard's."""
    changed = await (app.pause(queue) if paused else app.resume(queue))
    return _json({"queue": queue, "paused": paused, "changed": changed})


async def cancel_matching(app: Spillway, body: CancelRequest) -> Response:
    """One page of a bulk cancel: the answer of the API's route and of the dashboard's."""
    match = CancelFilter(body.queue, body.type, body.priority, body.older_than_s)
    page = await app.cancel_matching(
        match, cursor=body.cursor, limit=body.limit, dry_run=body.dry_run
    )
    return _json({
        "examined": page.examined, "matched": page.matched, "cancelled": page.cancelled,
        "dry_run": page.dry_run, "more": page.more, "cursor": page.cursor,
    })  # fmt: skip


def _add_operator_routes(api: FastAPI, app: Spillway) -> None:
    def endpoint(paused: bool) -> Callable[[str], Awaitable[Response]]:
        async def change(
            name: str = Path(pattern=_QUEUE_NAME, description="A queue's name."),
        ) -> Response:
            return await set_paused(app, name, paused)

        return change

    for action, paused in (("pause", True), ("resume", False)):
        api.add_api_route(
            f"/queues/{{name}}/{action}",
            endpoint(paused),
            methods=["POST"],
            operation_id=f"{action}Queue",
            tags=["operations"],
            summary=f"{action.capitalize()} a queue",
            response_model=QueueState,
            responses=_problems(401, 403, 404, 422, 503),
            description=(
                "Workers start none of the queue's tasks (within about 0.1 s plus one read); "
                "running tasks finish and `POST /tasks` still accepts. Safe to repeat."
                if paused
                else "Workers start the queue's tasks again. Safe to repeat."
            ),
        )

    @api.get(
        "/queues/{name}/events",
        operation_id="queueEvents",
        tags=["operations"],
        summary="Follow the status changes of a queue's tasks (server-sent events)",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "The event stream."},
            **_problems(401, 403, 404, 422, 503),
        },
        description="A `text/event-stream` of `status` events, one per change of a task's "
        "status in the queue (queued, running, failed with a retry to come, and each final "
        "status), each `{task_id, queue, priority, type, status, attempts, at}`; `status` and "
        "`type` (each repeatable) keep only those. Reconnecting with `Last-Event-ID` sends "
        "every change since, while the server still holds them (about the last 10,000 per "
        "shard, kept two minutes after the last follower leaves); else a `gap` event says "
        "some were missed. The stream ends after five minutes: reconnect. A comment line "
        "every 15 s keeps proxies from closing an idle stream.",
    )
    async def queue_events(
        name: str = Path(pattern=_QUEUE_NAME, description="A queue's name."),
        status: Annotated[
            list[TaskStatus] | None,
            Query(max_length=7, description="Only these statuses (repeatable)."),
        ] = None,
        type: Annotated[  # the query parameter's name
            list[Annotated[str, StringConstraints(max_length=200)]] | None,
            Query(max_length=50, description="Only these task types (repeatable)."),
        ] = None,
        last_event_id: str | None = Header(default=None, alias="Last-Event-ID", max_length=8192),
    ) -> StreamingResponse:
        await app.check_queue(name)  # a 404 (or 503) before the stream starts
        joined = asyncio.Event()
        events = follow(
            app.feed, name, statuses=status, types=type, last_event_id=last_event_id,
            timeout=_STREAM_S, joined=joined,
        )  # fmt: skip
        # The stream's first line goes out once the follower is counted in, so a client that
        # read it sees every change from then on (and a 503 comes before the stream).
        first = asyncio.ensure_future(anext(events))
        waiting = asyncio.ensure_future(joined.wait())
        await asyncio.wait({first, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if first.done() and first.exception() is not None:
            await events.aclose()
            first.result()  # raises: BrokerUnavailable is a 503
        return StreamingResponse(
            sse(events, _queue_frame, first), media_type="text/event-stream", headers=_SSE_HEADERS
        )

    @api.post(
        "/tasks/cancel",
        operation_id="cancelTasks",
        tags=["operations"],
        summary="Cancel waiting tasks by queue, type, priority and age (one page)",
        response_model=CancelResult,
        responses=_problems(400, 401, 403, 404, 415, 422, 503),
        description="Reads at most `limit` queued, delayed or retry-waiting tasks and cancels "
        "those the filter selects, each as `DELETE /tasks/{task_id}` does (running tasks are "
        "skipped). While `more` is true, repeat with `cursor`. `dry_run` counts only.",
    )
    async def cancel_tasks(body: CancelRequest) -> Response:
        return await cancel_matching(app, body)


def add_routes(api: FastAPI, app: Spillway) -> None:
    """Every route but the accept routes."""
    _add_operator_routes(api, app)  # first: "/tasks/cancel" is not a task's path
    _add_task_routes(api, app)
    _add_admin_routes(api, app)
