"""GET /tasks/{id}/events: a task's status changes as server-sent events, through a real server.

The worker runs in this process on the server's settings, with handlers held at each step by
events, so every status the task passes through is there to be seen.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from tests.api.conftest import ADMIN_KEY
from tests.api.servers import ApiServer, drain

from spillway import Spillway, Worker


async def events(
    http: httpx.AsyncClient, task_id: str, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(id, task resource) of each event of the stream, until it ends."""
    async with http.stream("GET", f"/tasks/{task_id}/events", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if not line:
                if "data" in fields:
                    assert fields["event"] == "status"
                    yield fields["id"], orjson.loads(fields["data"])
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value


async def test_every_status_of_a_retried_task_arrives_in_order_and_the_stream_ends(
    http: httpx.AsyncClient, api_server: ApiServer
) -> None:
    app = Spillway(api_server.settings)
    gates = [asyncio.Event(), asyncio.Event()]
    attempt = 0

    @app.task(max_retries=1, retry_base=0.01, retry_cap=0.02)
    async def flaky(payload: Any) -> str:
        nonlocal attempt
        attempt += 1
        await gates[attempt - 1].wait()
        if attempt == 1:
            raise RuntimeError("first attempt fails")
        return "done"

    task_id = await app.enqueue("flaky", None)
    worker = Worker(app, concurrency=1)
    running = asyncio.create_task(worker.run())
    seen: list[tuple[str, str, int]] = []
    try:
        async for eid, doc in events(http, task_id):
            seen.append((eid, doc["status"], doc["attempts"]))
            if doc["status"] == "running":
                gates[doc["attempts"] - 1].set()  # let this attempt end once it was seen
    finally:
        worker.stop()
        await running
        await app.close()
    assert seen[-4:] == [
        ("1.1", "running", 1), ("1.2", "failed", 1), ("2.1", "running", 2),
        ("2.3", "succeeded", 2),
    ]  # fmt: skip
    assert seen[0] in [("0.0", "queued", 0), ("1.1", "running", 1)]  # the worker may be first


async def test_a_client_reconnecting_with_last_event_id_gets_only_what_came_since(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    task_id = await spillway.enqueue("echo", {"n": 1})
    first = [e async for e in _first(events(http, task_id))]
    assert [(eid, doc["status"]) for eid, doc in first] == [("0.0", "queued")]
    # The client left: the server stops its stream and drops the subscription.
    channel = spillway.broker.keys.for_task(task_id).channel(task_id)
    for _ in range(200):
        [(_, subscribers)] = await spillway.broker.client.pubsub_numsub(channel)
        if subscribers == 0:
            break
        await asyncio.sleep(0.05)
    assert subscribers == 0

    await drain(spillway, task_id)

    since = [e async for e in events(http, task_id, {"Last-Event-ID": "0.0"})]
    assert [(eid, doc["status"], doc["result"]) for eid, doc in since] == [
        ("1.3", "succeeded", {"n": 1})
    ]
    # Seen the end already: the stream ends at once, with nothing in it.
    assert [e async for e in events(http, task_id, {"Last-Event-ID": "1.3"})] == []
    # An id Spillway never wrote is no id: the client gets the current state.
    assert len([e async for e in events(http, task_id, {"Last-Event-ID": "x.y"})]) == 1
    too_long = await http.get(f"/tasks/{task_id}/events", headers={"Last-Event-ID": "9" * 25})
    assert too_long.status_code == 422
    assert too_long.headers["content-type"] == "application/problem+json"


async def _first(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for item in stream:
        yield item
        return


async def test_many_followers_of_a_task_share_one_subscription(
    http: httpx.AsyncClient, spillway: Spillway, api_server: ApiServer
) -> None:
    task_id = await spillway.enqueue("echo", {"n": 2})
    channel = spillway.broker.keys.for_task(task_id).channel(task_id)
    started = asyncio.Event()
    opened = 0

    async def follow() -> list[str]:
        nonlocal opened
        statuses = []
        async for _, doc in events(http, task_id):
            statuses.append(doc["status"])
            opened += 1
            if opened == 20:
                started.set()
        return statuses

    followers = [asyncio.create_task(follow()) for _ in range(20)]
    await asyncio.wait_for(started.wait(), 10)
    [(_, subscribers)] = await spillway.broker.client.pubsub_numsub(channel)
    assert subscribers == 1  # one API process, one subscription, twenty streams
    await drain(spillway, task_id)
    results = await asyncio.gather(*followers)
    # Each saw the start unless the run ended before its re-read; each saw the end once.
    assert all(r in (["queued", "running", "succeeded"], ["queued", "succeeded"]) for r in results)


async def test_a_record_that_turns_unreadable_mid_stream_ends_the_stream_cleanly(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    task_id = await spillway.enqueue("echo", {"n": 3})
    shard = spillway.broker.keys.for_task(task_id)
    seen = []
    async for _, doc in events(http, task_id):
        seen.append(doc["status"])
        # Someone with access to Redis writes garbage, and a message wakes the stream.
        await spillway.broker.client.hset(shard.task(task_id), "status", "bogus")
        await spillway.broker.client.publish(shard.channel(task_id), "running")
    assert seen == ["queued"]  # then the stream ended, without an error mid-body
    again = await http.get(f"/tasks/{task_id}/events")
    assert again.status_code == 409  # what GET /tasks/{id} answers: record-unreadable


async def test_an_unknown_or_foreign_task_is_404_before_any_stream(
    secured_server: ApiServer,
) -> None:
    async with httpx.AsyncClient(base_url=secured_server.url, timeout=10) as http:
        one = {"Authorization": "Bearer key-one"}
        two = {"Authorization": "Bearer key-two"}
        accepted = await http.post("/tasks", json={"type": "echo", "payload": {}}, headers=one)
        task_id = accepted.json()["task_id"]

        missing = await http.get("/tasks/0123456789abcdef0123456789abcdef/events", headers=one)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        foreign = await http.get(f"/tasks/{task_id}/events", headers=two)
        assert foreign.status_code == 404  # another key's task is no task of yours
        anonymous = await http.get(f"/tasks/{task_id}/events")
        assert anonymous.status_code == 401
        for key in (one, {"Authorization": f"Bearer {ADMIN_KEY}"}):
            async with http.stream("GET", f"/tasks/{task_id}/events", headers=key) as r:
                assert r.status_code == 200
                with contextlib.suppress(httpx.ReadTimeout):
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            assert orjson.loads(line[6:])["status"] == "queued"
                            break
