"""`create_app`: the FastAPI application in front of a `Spillway` application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from spillway import __version__
from spillway.api.accept import Accept, route_path
from spillway.api.auth import ADMIN, Auth
from spillway.api.body import ClientGone
from spillway.api.browsers import API_HEADERS, SiteCheck
from spillway.api.docs import add_docs_routes
from spillway.api.openapi import openapi_builder
from spillway.api.problems import HTTPProblem, Rendered, render
from spillway.api.routes import add_accept_routes, add_routes
from spillway.app import Spillway
from spillway.dashboard import add_dashboard_routes, is_dashboard
from spillway.errors import BrokerUnavailable, ConfigurationError, SpillwayError, UnknownTaskType

__all__ = ["SpillwayAPI", "create_app"]

log = logging.getLogger("spillway.api")

_DESCRIPTION = """\
Accepts tasks over HTTP and answers `202 Accepted` only once the task is durably in Redis.
Workers run the tasks; read or long-poll their outcome at `GET /tasks/{task_id}`.
Errors are RFC 9457 `application/problem+json` documents.
"""


class SpillwayAPI(FastAPI):
    """FastAPI with admission, and the accept routes answered before FastAPI's routing.

    Admission (`Auth.admit`: the cross-site checks, then the API key) runs on the headers
    before anything reads a body; every answer carries the security headers of `API_HEADERS`
    unless it sets its own. The accept routes
    (``POST /tasks``, ``/tasks/batch``, ``/process``) go to `Accept.handle` through ASGI, or,
    under the fast protocol, to `Accept.answer` through `direct_route`; their FastAPI routes
    exist for the OpenAPI document and call the same core.
    """

    spillway: Spillway

    def setup_spillway(self, spillway: Spillway, auth: Auth, accept: Accept) -> None:
        self.spillway = spillway
        self._auth = auth
        self._accept = accept
        # What the fast protocol asks for a request it can answer without ASGI, and the
        # headers it adds to each such answer, serialised once instead of once per answer.
        self.direct_route = accept.direct_route
        self.direct_headers = b"".join(b"%s: %s\r\n" % header for header in API_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path = route_path(scope)
        try:
            self._auth.admit(scope, path)
        except HTTPProblem as exc:
            status, headers, body = render(exc)
            await send_rendered(send, (status, [*headers, *API_HEADERS], body))
            return
        if scope["method"] == "POST" and path in self._accept.limits:
            try:
                rendered = await self._accept.handle(path, scope, receive)
            except ClientGone:
                return
            status, headers, body = rendered
            await send_rendered(send, (status, [*headers, *API_HEADERS], body))
            return
        await super().__call__(scope, receive, _secured(send))


def _secured(send: Send) -> Send:
    """`send`, adding to the response the `API_HEADERS` it does not set itself."""

    async def send_secured(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            present = {name.lower() for name, _ in headers}
            headers += [h for h in API_HEADERS if h[0] not in present]
            message["headers"] = headers
        await send(message)

    return send_secured


async def send_rendered(send: Send, rendered: Rendered) -> None:
    status, headers, body = rendered
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
        app.broker.drain.start()  # the drain rate behind Retry-After (spillway.pacing)
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
        docs_url=None,  # served from the package, not a CDN: `add_docs_routes`
        swagger_ui_oauth2_redirect_url=None,
    )
    auth = Auth(
        settings.api_keys,
        browser=is_dashboard,
        sites=SiteCheck(settings.allowed_hosts),
        admin_keys=settings.admin_keys,
    )
    if not auth.has_admin:
        log.warning(
            "SPILLWAY_API_KEYS is set but SPILLWAY_ADMIN_KEYS is not: no key may read the "
            "dead letters, stats, metrics or the dashboard"
        )
    accept = Accept(app, auth)
    api.setup_spillway(app, auth, accept)
    _add_error_handlers(api)
    add_accept_routes(api, accept)
    add_routes(api, app)
    add_dashboard_routes(api, app)
    add_docs_routes(api)
    api.openapi = openapi_builder(api, app)  # type: ignore[method-assign]
    return api


def _add_error_handlers(api: FastAPI) -> None:
    async def problem(request: Request, exc: Exception) -> Response:
        status, headers, body = render(exc, admin=request.scope.get(ADMIN, False))
        out = Response(body, status_code=status)
        out.raw_headers = headers
        return out

    for cls in (HTTPProblem, SpillwayError, HTTPException, RequestValidationError, Exception):
        api.add_exception_handler(cls, problem)
