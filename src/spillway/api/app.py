"""`create_app`: the FastAPI application in front of a `Spillway` application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from spillway import __version__
from spillway.api.accept import Accept, ClientGone
from spillway.api.auth import ANONYMOUS, PUBLIC_PATHS, Auth
from spillway.api.problems import HTTPProblem, Rendered, render
from spillway.api.schemas import (
    BatchResult,
    DeadLetters,
    Health,
    ProblemDoc,
    TaskAccepted,
    TaskResource,
    resource,
    submission_schemas,
)
from spillway.app import Spillway
from spillway.errors import (
    BrokerUnavailable,
    ConfigurationError,
    ResultTimeout,
    SpillwayError,
    UnknownTaskType,
)
from spillway.records import Stats

__all__ = ["MAX_WAIT_S", "SpillwayAPI", "create_app"]

log = logging.getLogger("spillway.api")

MAX_WAIT_S = 60.0
_CALLER = "spillway.caller"
_QUEUE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"

AcceptHandler = Callable[[Scope, Receive, str], Awaitable[Rendered]]

_DESCRIPTION = """\
Accepts tasks over HTTP and answers `202 Accepted` only once the task is durably in Redis.
Workers run the tasks; read or long-poll their outcome at `GET /tasks/{task_id}`.
Errors are RFC 9457 `application/problem+json` documents.
"""


class SpillwayAPI(FastAPI):
    """FastAPI with authentication, and the accept routes served straight from ASGI.

    Authentication runs on the headers before anything reads a body. The accept routes
    (``POST /tasks``, ``/tasks/batch``, ``/process``) skip FastAPI's routing and dependency
    machinery, which costs more than the rest of accepting a task; their FastAPI routes
    still exist, so they are documented and served the same way if called directly.
    """

    spillway: Spillway

    def setup_spillway(self, spillway: Spillway, fast: dict[str, AcceptHandler]) -> None:
        self.spillway = spillway
        self._auth = Auth(spillway.settings.api_keys)
        self._fast = fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path = _route_path(scope)
        caller = ANONYMOUS
        if self._auth.enabled and path not in PUBLIC_PATHS:
            try:
                caller = self._auth.identify(scope["headers"])
            except HTTPProblem as exc:
                await send_rendered(send, render(exc))
                return
        scope[_CALLER] = caller
        handler = self._fast.get(path) if scope["method"] == "POST" else None
        if handler is None:
            await super().__call__(scope, receive, send)
            return
        try:
            rendered = await handler(scope, receive, caller)
        except ClientGone:
            return
        except Exception as exc:
            rendered = render(exc)
        await send_rendered(send, rendered)


async def send_rendered(send: Send, rendered: Rendered) -> None:
    status, headers, body = rendered
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def create_app(app: Spillway) -> FastAPI:
    """The HTTP API of `app`: accept tasks, read and wait for them, dead letters, health.

    Its lifespan connects `app` (refusing a Redis that could evict keys) and closes it. Mounted
    inside another application, whose lifespan does not run it, it connects on first use.
    """
    settings = app.settings
    default_type = settings.default_task_type
    if default_type is not None:
        try:
            app.resolve(default_type)
        except UnknownTaskType as exc:
            raise ConfigurationError(f"SPILLWAY_DEFAULT_TASK_TYPE: {exc}") from exc

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await app.connect()
        except BrokerUnavailable as exc:
            # Serve anyway: /readyz says not ready, and requests answer 503 until Redis is back.
            log.warning("Redis is not reachable at start-up: %s", exc)
        try:
            yield
        finally:
            await app.close()

    api = SpillwayAPI(
        title="Spillway",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
    )
    accept = Accept(app)
    fast: dict[str, AcceptHandler] = {"/tasks": accept.submit, "/tasks/batch": accept.batch}
    if default_type is not None:
        fast["/process"] = accept.process
    api.setup_spillway(app, fast)
    _add_error_handlers(api)
    _add_accept_routes(api, fast)
    _add_task_routes(api, app)
    _add_admin_routes(api, app)
    api.openapi = _openapi_builder(api, app)  # type: ignore[method-assign]
    return api


def _add_error_handlers(api: FastAPI) -> None:
    async def problem(request: Request, exc: Exception) -> Response:
        status, headers, body = render(exc)
        out = Response(body, status_code=status)
        out.raw_headers = headers
        return out

    for cls in (HTTPProblem, SpillwayError, HTTPException, RequestValidationError, Exception):
        api.add_exception_handler(cls, problem)


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ProblemDoc, "description": "A problem document."} for code in codes}


_ACCEPT_PROBLEMS = _problems(400, 401, 413, 415, 422, 429, 503)
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


def _add_accept_routes(api: FastAPI, fast: dict[str, AcceptHandler]) -> None:
    def endpoint(path: str) -> Callable[[Request], Awaitable[Response]]:
        handler = fast[path]

        async def serve(request: Request) -> Response:
            status, headers, body = await handler(
                request.scope, request.receive, request.scope.get(_CALLER, ANONYMOUS)
            )
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
        "id. Nothing is enqueued when the answer is not 202.",
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
        responses=_problems(400, 401, 413, 415, 422, 503),
        openapi_extra={"requestBody": body("NewBatch")},
        description="Writes every valid task in one Redis round trip; each task is accepted or "
        "rejected on its own, and `results` follows the order of `tasks`.",
    )
    if "/process" in fast:
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
        await app.broker.ping()
        return _json({"status": "ready"})


def _openapi_builder(api: FastAPI, app: Spillway) -> Callable[[], dict[str, Any]]:
    """OpenAPI with one submission schema per task type and problem+json for every error."""

    def build() -> dict[str, Any]:
        if api.openapi_schema:
            return api.openapi_schema
        doc = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        single, item, defs = submission_schemas(app.tasks)
        schemas.update(defs)
        schemas["NewTask"] = single
        max_batch = app.settings.max_batch
        schemas["NewBatch"] = {
            "type": "object",
            "title": "NewBatch",
            "required": ["tasks"],
            "additionalProperties": False,
            "properties": {
                "tasks": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_batch,
                    "items": {"$ref": "#/components/schemas/NewBatchItem"},
                }
            },
        }
        schemas["NewBatchItem"] = item
        default_type = app.settings.default_task_type
        if default_type is not None:
            payload = app.resolve(default_type).adapter.json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schemas.update(payload.pop("$defs", {}))
            schemas["ProcessPayload"] = payload
        problem = {"$ref": "#/components/schemas/ProblemDoc"}
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                for code, response in operation.get("responses", {}).items():
                    if code.isdigit() and int(code) >= 400:
                        response["content"] = {"application/problem+json": {"schema": problem}}
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        if app.settings.api_keys:
            doc["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            doc["security"] = [{"bearer": []}, {"apiKey": []}]
            for path in PUBLIC_PATHS & doc["paths"].keys():
                for operation in doc["paths"][path].values():
                    operation["security"] = []
        api.openapi_schema = doc
        return doc

    return build
