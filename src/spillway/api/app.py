"""`create_app`: the FastAPI application in front of a `Spillway` application."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from spillway import __version__, metrics
from spillway.api.accept import Accept, Answer, ClientGone, Then
from spillway.api.auth import ANONYMOUS, PUBLIC_PATHS, Auth
from spillway.api.openapi import openapi_builder
from spillway.api.problems import HTTPProblem, Rendered, render
from spillway.api.routes import CALLER, AcceptHandler, add_accept_routes, add_routes
from spillway.api.uvicorn_fast import DirectHandler
from spillway.app import Spillway
from spillway.dashboard import add_dashboard_routes, is_dashboard
from spillway.errors import BrokerUnavailable, ConfigurationError, SpillwayError, UnknownTaskType

__all__ = ["SpillwayAPI", "create_app"]

log = logging.getLogger("spillway.api")

#: An accept route given its whole body (`Accept.submit_soon`).
SoonHandler = Callable[[Scope, bytes, str, Then], Answer]

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
    still exist, so they are documented and served the same way if called directly. Under
    `spillway.api.serve`, a small ``POST /tasks`` or ``/process`` does not even reach ASGI:
    the server answers it through `direct_route`.
    """

    spillway: Spillway

    def setup_spillway(
        self, spillway: Spillway, fast: dict[str, AcceptHandler], soon: dict[str, SoonHandler]
    ) -> None:
        self.spillway = spillway
        self._auth = Auth(spillway.settings.api_keys)
        self._fast = fast
        self._soon = soon

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path = _route_path(scope)
        handler = self._fast.get(path) if scope["method"] == "POST" else None
        if handler is not None:
            try:
                rendered = await self._accept(scope, receive, path, handler)
            except ClientGone:
                return
            await send_rendered(send, rendered)
            return
        try:
            self._identify(scope, path)
        except HTTPProblem as exc:
            await send_rendered(send, render(exc))
            return
        await super().__call__(scope, receive, send)

    def direct_route(self, scope: Scope) -> DirectHandler | None:
        """``POST /tasks`` and ``/process``, for a server that reads their small bodies itself
        (`spillway.api.direct`): the same answers as through ASGI, without its cost, and
        without a coroutine per request. A request its headers refuse is left to ASGI, which
        answers before reading the body."""
        path = _route_path(scope)
        if path not in self._soon:
            return None
        try:
            self._identify(scope, path)
        except HTTPProblem:
            return None
        return self._direct

    def _direct(self, scope: Scope, body: bytes) -> Answer:
        path = _route_path(scope)
        then = partial(self._finish, path, time.perf_counter())
        return self._soon[path](scope, body, scope[CALLER], then)

    def _identify(self, scope: Scope, path: str) -> str:
        """The caller, from the request's headers (`HTTPProblem` 401 if they do not say)."""
        caller = ANONYMOUS
        if self._auth.enabled and path not in PUBLIC_PATHS:
            caller = self._auth.identify(scope["headers"], browser=is_dashboard(path))
        scope[CALLER] = caller
        return caller

    async def _accept(
        self, scope: Scope, receive: Receive, path: str, handler: AcceptHandler
    ) -> Rendered:
        """An accept route's answer (`ClientGone` if the client left before its body came)."""
        try:
            caller = self._identify(scope, path)
        except HTTPProblem as exc:
            return render(exc)
        started = time.perf_counter()
        try:
            rendered = await handler(scope, receive, caller)
        except ClientGone:
            raise
        except Exception as exc:
            rendered = render(exc)
        return self._finish(path, started, rendered)

    def _finish(self, path: str, started: float, rendered: Rendered) -> Rendered:
        """An accept route's answer, counted, with the close it may need."""
        metrics.accept_answered(path, rendered[0], rendered[2], time.perf_counter() - started)
        if rendered[0] in (408, 413):
            # The rest of the body is not read, so the connection cannot carry another request:
            # say so. The server reads on and drops what the client still sends before it
            # closes, so the client gets this answer rather than a reset (a lingering close,
            # `spillway.api.protocol`).
            status, headers, body = rendered
            return status, [*headers, (b"connection", b"close")], body
        return rendered


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
    soon: dict[str, SoonHandler] = {"/tasks": accept.submit_soon}
    if default_type is not None:
        fast["/process"] = accept.process
        soon["/process"] = accept.process_soon
    api.setup_spillway(app, fast, soon)
    _add_error_handlers(api)
    add_accept_routes(api, fast)
    add_routes(api, app)
    add_dashboard_routes(api, app)
    api.openapi = openapi_builder(api, app)  # type: ignore[method-assign]
    return api


def _add_error_handlers(api: FastAPI) -> None:
    async def problem(request: Request, exc: Exception) -> Response:
        status, headers, body = render(exc)
        out = Response(body, status_code=status)
        out.raw_headers = headers
        return out

    for cls in (HTTPProblem, SpillwayError, HTTPException, RequestValidationError, Exception):
        api.add_exception_handler(cls, problem)
