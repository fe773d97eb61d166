"""Operators' routes in a surge: pause and resume a queue, bulk cancel with a dry run.

Through a real server of this module's own (its own key prefix: a paused queue must not hold
up the other modules' tasks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from tests.api.servers import ApiServer, serving

from spillway import Spillway, TaskStatus
from spillway.embedded import EmbeddedRedis

RESIZE = {"url": "https://example.com/a.png", "width": 2, "height": 3}


@pytest.fixture(scope="module")
def server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    yield from serving(redis_server.url, tmp_path_factory.mktemp("operations"))


@pytest.fixture
async def http(server: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
async def app(server: ApiServer) -> AsyncIterator[Spillway]:
    application = server.spillway()
    yield application
    await application.close()


def problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["type"] == f"urn:spillway:problem:{slug}"
    return doc


async def test_a_paused_queue_shows_everywhere_and_still_accepts(
    http: httpx.AsyncClient,
) -> None:
    paused = await http.post("/queues/default/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json() == {"queue": "default", "paused": True, "changed": True}
    assert (await http.post("/queues/default/pause")).json()["changed"] is False
    try:
        accepted = await http.post("/tasks", json={"type": "resize", "payload": RESIZE})
        assert accepted.status_code == 202
        assert (await http.get("/stats")).json()["paused"] == ["default"]
        metrics = (await http.get("/metrics")).text
        assert 'spillway_queue_paused{queue="default"} 1.0' in metrics
        assert 'spillway_queue_paused{queue="risky"} 0.0' in metrics
    finally:
        resumed = await http.post("/queues/default/resume")
    assert resumed.json() == {"queue": "default", "paused": False, "changed": True}
    assert (await http.get("/stats")).json()["paused"] == []
    assert 'spillway_queue_paused{queue="default"} 0.0' in (await http.get("/metrics")).text


@pytest.mark.parametrize("action", ["pause", "resume"])
async def test_an_unknown_or_malformed_queue_name_is_refused(
    http: httpx.AsyncClient, action: str
) -> None:
    unknown = problem(await http.post(f"/queues/nowhere/{action}"), 404, "queue-not-found")
    assert unknown["queue"] == "nowhere"
    assert unknown["known"] == ["default", "risky"]  # open mode: every caller is an admin
    problem(await http.post(f"/queues/{'q' * 65}/{action}"), 422, "request-invalid")
    problem(await http.post(f"/queues/a%23high/{action}"), 422, "request-invalid")
    assert (await http.get("/stats")).json()["paused"] == []


async def cancel(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await http.post("/tasks/cancel", json=body)
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


async def test_bulk_cancel_counts_then_cancels_a_page_at_a_time(
    http: httpx.AsyncClient, app: Spillway
) -> None:
    low = [await app.enqueue("echo", {"n": n}, priority="low") for n in range(5)]
    kept = await app.enqueue("echo", {"n": 9})
    selection = {"queue": "default", "type": "echo", "priority": "low"}

    counted = await cancel(http, **selection, dry_run=True)
    assert counted == {"examined": 5, "matched": 5, "cancelled": 0, "dry_run": True,
                       "more": False, "cursor": None}  # fmt: skip
    pages = []
    cursor = None
    while True:
        page = await cancel(http, **selection, limit=2, cursor=cursor)
        pages.append(page)
        assert page["examined"] <= 2
        if not page["more"]:
            break
        cursor = page["cursor"]
    assert sum(p["cancelled"] for p in pages) == 5
    assert len(pages) >= 3
    assert {(await app.get(t)).status for t in low} == {TaskStatus.CANCELLED}
    assert (await app.get(kept)).status is TaskStatus.QUEUED
    again = await cancel(http, **selection)
    assert (again["matched"], again["cancelled"]) == (0, 0)
    await app.cancel(kept)


@pytest.mark.parametrize(
    ("body", "status", "slug"),
    [
        ({}, 422, "filter-invalid"),
        ({"dry_run": True}, 422, "filter-invalid"),
        ({"queue": "nowhere"}, 404, "queue-not-found"),
        ({"type": "no-such-type"}, 422, "unknown-task-type"),
        ({"priority": "urgent"}, 422, "request-invalid"),
        ({"older_than_s": -1}, 422, "request-invalid"),
        ({"queue": "default", "limit": 5000}, 422, "request-invalid"),
        ({"queue": "default", "colour": "red"}, 422, "request-invalid"),
        ({"queue": "default", "cursor": "made-up"}, 422, "filter-invalid"),
        ({"queue": "default", "cursor": "default|7|stream|"}, 422, "filter-invalid"),
    ],
)
async def test_a_bad_filter_is_a_precise_problem_and_cancels_nothing(
    http: httpx.AsyncClient, app: Spillway, body: dict[str, Any], status: int, slug: str
) -> None:
    task_id = await app.enqueue("echo", {"n": 1})

    problem(await http.post("/tasks/cancel", json=body), status, slug)

    assert (await app.get(task_id)).status is TaskStatus.QUEUED
    await app.cancel(task_id)
