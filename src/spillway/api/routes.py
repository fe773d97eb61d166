"""The routes of the API besides the accept fast path: reading, waiting, cancelling, operations.

The accept routes are declared here too, for the OpenAPI document and for callers that reach
the FastAPI router directly; `SpillwayAPI` normally answers them before routing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Path, Query, Request, Response

from spillway import metrics
from spillway.api.accept import Accept
from spillway.api.problems import HTTPProblem
from spillway.api.schemas import (
    BatchResult,
    DeadLetters,
    Health,
    ProblemDoc,
    TaskAccepted,
    TaskResource,
    resource,
)
from spillway.app import Spillway
from spillway.errors import BrokerUnavailable, ResultTimeout
from spillway.records import Stats

__all__ = ["MAX_WAIT_S", "add_accept_routes", "add_routes"]

MAX_WAIT_S = 60.0
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
        if wait:
            try:
                record = await app.wait(task_id, wait)
            except ResultTimeout:
                record = await app.get(task_id)
        else:
            record = await app.get(task_id)
        return _json(resource(record, request.scope.get("root_path", "")))

    @api.delete(
        "/tasks/{task_id}",
        operation_id="cancelTask",
        tags=["tasks"],
        summary="Cancel a task that has not started",
        status_code=202,
        response_model=TaskResource,
        responses=_problems(401, 404, 409, 503),
    )
    async def cancel_task(request: Request, task_id: str) -> Response:
        record = await app.cancel(task_id)
        return _json(resource(record, request.scope.get("root_path", "")), 202)


def _add_admin_routes(api: FastAPI, app: Spillway) -> None:
    @api.get(
        "/dlq",
        operation_id="listDeadLetters",
        tags=["dead letters"],
        summary="List dead-lettered tasks",
        response_model=DeadLetters,
        responses=_problems(401, 422, 503),
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
        responses={202: {"headers": _LOCATION}, **_problems(401, 404, 503)},
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
        responses=_problems(401, 503),
    )
    async def stats() -> Response:
        return _json((await app.stats()).model_dump(mode="json"))

    @api.get(
        "/metrics",
        operation_id="metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, **_problems(401)},
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


def add_routes(api: FastAPI, app: Spillway) -> None:
    """Every route but the accept routes."""
    _add_task_routes(api, app)
    _add_admin_routes(api, app)
