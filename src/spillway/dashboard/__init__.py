"""The live dashboard at ``/dashboard``: one static page that polls ``/dashboard/state``.

The page, its script and its stylesheet ship inside the package (no build step, nothing
fetched from the internet). The browser computes rates and latency percentiles from the
differences between two polls, so the server only reports cumulative figures: queue sizes,
workers and stored outcome counts from Redis, and the event counters and histograms of this
host's processes (see `spillway.metrics`).

With API keys configured, the dashboard's paths also accept the key as the password of HTTP
Basic credentials, so a browser's own login prompt works. Browsers send those credentials by
themselves, so the page's actions (replay, pause and resume a queue, bulk cancel) send a
custom header (`REPLAY_HEADER`), which another site's page cannot send without a CORS
preflight this API never grants: the cross-site checks of `spillway.api.browsers`, run on
every request, refuse an action without it or from another origin. The actions answer as
the API's own routes do (`spillway.api.routes`), through the same calls. The page and its
assets are sent with a strict Content-Security-Policy (their own origin only, never framed).
"""

from __future__ import annotations

import time
from importlib.resources import files

import orjson
from fastapi import FastAPI, Path, Response
from starlette.exceptions import HTTPException

from spillway import metrics
from spillway.api.browsers import PAGE_HEADERS, page_policy
from spillway.api.problems import HTTPProblem
from spillway.api.routes import cancel_matching, set_paused
from spillway.api.schemas import CancelRequest
from spillway.app import Spillway
from spillway.errors import BrokerUnavailable

__all__ = ["PREFIX", "REPLAY_HEADER", "add_dashboard_routes", "is_dashboard"]

PREFIX = "/dashboard"
#: The header the page sends with a replay (see the module docstring).
REPLAY_HEADER = "X-Spillway-Dashboard"
_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_DEAD_LETTERS_SHOWN = 50
_QUEUE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
# The page's icon is a data: URL; everything else comes from the dashboard's own paths.
_HEADERS = {**PAGE_HEADERS, "Content-Security-Policy": page_policy(img_src="'self' data:")}


def is_dashboard(path: str) -> bool:
    """Whether `path` is one of the dashboard's (where Basic credentials are accepted)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def _asset(name: str) -> Response:
    body = files(__package__).joinpath("static", name).read_bytes()
    # Short-lived caching: a new release must not keep an old script in the browser for long.
    headers = {"Cache-Control": "max-age=60", **_HEADERS}
    return Response(body, media_type=_ASSETS[name], headers=headers)


def add_dashboard_routes(api: FastAPI, app: Spillway) -> None:
    """The page, its assets, its state feed and its actions."""

    @api.get(PREFIX, include_in_schema=False)
    async def page() -> Response:
        return _asset("index.html")

    @api.get(PREFIX + "/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in _ASSETS or name == "index.html":
            raise HTTPException(404, f"no dashboard asset {name!r}")
        return _asset(name)

    @api.get(PREFIX + "/state", include_in_schema=False)
    async def state() -> Response:
        doc: dict[str, object] = {"time": time.time(), "broker_up": True}
        try:
            figures = await app.stats()
            dead = await app.dead_letters(limit=_DEAD_LETTERS_SHOWN)
        except BrokerUnavailable:
            doc.update(broker_up=False, queues=[], workers=[], counts={}, dead_letters=[])
        else:
            doc.update(figures.model_dump(mode="json"))
            doc["dead_letters"] = [d.model_dump(mode="json", exclude={"payload"}) for d in dead]
        doc["events"] = metrics.totals()
        doc["histograms"] = metrics.histograms()
        return Response(
            orjson.dumps(doc), media_type="application/json", headers={"Cache-Control": "no-store"}
        )

    @api.post(PREFIX + "/replay/{task_id}", include_in_schema=False, status_code=202)
    async def replay(task_id: str) -> Response:
        if not await app.replay(task_id):
            raise HTTPProblem(
                404, "task-not-found", f"no dead letter has task id {task_id!r}", task_id=task_id
            )
        body = orjson.dumps({"task_id": task_id, "status": "queued"})
        return Response(body, status_code=202, media_type="application/json")

    @api.post(PREFIX + "/queues/{name}/pause", include_in_schema=False)
    async def pause(name: str = Path(pattern=_QUEUE_NAME)) -> Response:
        return await set_paused(app, name, True)

    @api.post(PREFIX + "/queues/{name}/resume", include_in_schema=False)
    async def resume(name: str = Path(pattern=_QUEUE_NAME)) -> Response:
        return await set_paused(app, name, False)

    @api.post(PREFIX + "/cancel", include_in_schema=False)
    async def cancel(body: CancelRequest) -> Response:
        return await cancel_matching(app, body)
