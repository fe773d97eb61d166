"""GET /queues/{name}/events: every status change of a queue's tasks as server-sent events,
through a real server, with `Last-Event-ID` resumption (`spillway.feed`).

The server is this module's own (its own key prefix, the session's shard count); the tasks
run in this process, on a worker of an application declared here on the same settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio.cluster import RedisCluster
from tests.api.conftest import ADMIN_KEY
from tests.api.servers import ApiServer, serving

from spillway import Settings, Spillway, Worker
from spillway.embedded import EmbeddedRedis

SHARDS = int(os.environ.get("SPILLWAY_TEST_SHARDS", "1"))
QUEUE = "feed"


@pytest.fixture(scope="module")
def feed_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    yield from serving(
        redis_server.url, tmp_path_factory.mktemp("feed"), {"SPILLWAY_SHARDS": str(SHARDS)}
    )


@pytest.fixture
async def http(feed_server: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=feed_server.url, timeout=10.0) as client:
        yield client


@dataclass
class Changes:
    """An application on the module server's settings whose task types use `QUEUE`."""

    app: Spillway
    attempts: dict[str, int]

    async def drain(self) -> None:
        await Worker(self.app, burst=True, concurrency=1).run()


@pytest.fixture
async def changes(feed_server: ApiServer) -> AsyncIterator[Changes]:
    settings = Settings(
        redis_url=feed_server.redis_url, prefix=feed_server.prefix, shards=SHARDS, block_ms=50,
        retry_base=0.01, retry_cap=0.02,
    )  # fmt: skip
    app = Spillway(settings)
    attempts: dict[str, int] = {}

    @app.task(queue=QUEUE, max_retries=0)
    async def ok(payload: dict[str, Any]) -> int:
        return 1

    @app.task(queue=QUEUE, max_retries=1)
    async def flaky(payload: dict[str, Any]) -> int:
        key = str(payload["n"])
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] == 1:
            raise RuntimeError("the first attempt fails")
        return 2

    @app.task(queue=QUEUE, max_retries=0)
    async def doomed(payload: dict[str, Any]) -> None:
        raise RuntimeError("never works")

    await app.connect()  # registers the queue, so the server knows it
    try:
        yield Changes(app, attempts)
    finally:
        await app.close()


@dataclass
class Event:
    id: str
    kind: str
    data: dict[str, Any]


class Stream:
    """One SSE connection, read in the background into `events`."""

    def __init__(self, http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        self.events: list[Event] = []
        self.opened = asyncio.Event()
        self.grew = asyncio.Event()
        self._task = asyncio.create_task(self._read(http, path, headers))

    async def _read(self, http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        async with http.stream("GET", path, headers=headers, timeout=30) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                self.opened.set()  # the first line goes out once the server follows
                if line:
                    if not line.startswith(":"):
                        name, _, value = line.partition(": ")
                        fields[name] = value
                    continue
                if "data" in fields:
                    self.events.append(
                        Event(fields["id"], fields["event"], orjson.loads(fields["data"]))
                    )
                    self.grew.set()
                fields = {}

    async def open(self) -> Stream:
        await asyncio.wait_for(self.opened.wait(), 10)
        return self

    async def until(self, count: int) -> list[Event]:
        """Wait until `count` events arrived (10 s at most)."""
        try:
            async with asyncio.timeout(10):
                while len(self.events) < count:
                    self.grew.clear()
                    await self.grew.wait()
        except TimeoutError:
            raise AssertionError(f"{count} events awaited, came: {self.events}") from None
        return self.events

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def follow(
    http: httpx.AsyncClient, query: str = "", last_event_id: str | None = None
) -> Stream:
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    return await Stream(http, f"/queues/{QUEUE}/events{query}", headers).open()


def lives(events: list[Event]) -> dict[str, list[str]]:
    """Each task's statuses in the order their events came."""
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(e.data["task_id"], []).append(e.data["status"])
    return out


async def test_every_change_of_a_queue_arrives_in_order_and_a_filter_keeps_only_its_own(
    http: httpx.AsyncClient, changes: Changes
) -> None:
    everything = await follow(http)
    finals = await follow(http, "?status=succeeded&status=dead&type=ok&type=doomed")
    app = changes.app
    ok = await app.enqueue("ok", {})
    flaky = await app.enqueue("flaky", {"n": 1})
    doomed = await app.enqueue("doomed", {})
    cancelled = await app.enqueue("ok", {}, delay=60)
    await app.cancel(cancelled)
    await changes.drain()

    seen = lives(await everything.until(13))
    assert seen == {
        ok: ["queued", "running", "succeeded"],
        flaky: ["queued", "running", "failed", "running", "succeeded"],
        doomed: ["queued", "running", "dead"],
        cancelled: ["queued", "cancelled"],
    }
    by_status = {e.data["task_id"]: e.data for e in everything.events}
    assert (by_status[flaky]["attempts"], by_status[flaky]["type"]) == (2, "flaky")
    assert (by_status[ok]["queue"], by_status[ok]["priority"]) == (QUEUE, "default")
    assert all(e.kind == "status" for e in everything.events)
    assert len({e.id for e in everything.events}) == 13  # each event its own id

    assert lives(await finals.until(2)) == {ok: ["succeeded"], doomed: ["dead"]}
    # Nothing else passed the filter: the next event is the next change it selects.
    another = await app.enqueue("ok", {})
    await changes.drain()
    first, second, third = [e.data["task_id"] for e in await finals.until(3)]
    # ok and doomed may be in two shards, whose changes interleave in either order.
    assert ({first, second}, third) == ({ok, doomed}, another)
    await everything.close()
    await finals.close()


async def test_a_client_reconnecting_with_last_event_id_misses_nothing_and_sees_nothing_twice(
    http: httpx.AsyncClient, changes: Changes
) -> None:
    whole = await follow(http)  # a follower that never leaves: what the other must end with
    leaving = await follow(http)
    app = changes.app
    first = [await app.enqueue("ok", {"n": i}) for i in range(3)]
    await leaving.until(3)
    await leaving.close()
    last_id = leaving.events[2].id

    more = [await app.enqueue("flaky", {"n": i}) for i in range(3)]
    await changes.drain()
    back = await follow(http, last_event_id=last_id)

    # A copy: the stream goes on adding to its list (the late task below).
    expected = list(await whole.until(3 * 3 + 3 * 5))  # ok: 3 changes each; flaky: 5
    resumed = await back.until(len(expected) - 3)
    joined = leaving.events + resumed
    # Each task's changes, in order, once (the order across shards may differ between two
    # followers: each shard is read on its own).
    assert len(joined) == len(expected)
    assert lives(joined) == lives(expected)
    assert set(lives(expected)) == set(first + more)
    # The resumed stream goes on live, its ids still resumable.
    late = await app.enqueue("ok", {"n": 9})
    assert (await back.until(len(expected) - 2))[-1].data["task_id"] == late
    await whole.close()
    await back.close()


async def test_a_position_the_feed_no_longer_holds_is_a_gap_then_the_stream_goes_on(
    http: httpx.AsyncClient, changes: Changes
) -> None:
    old = ".".join(["1000", *(["0"] * SHARDS)])  # a position long trimmed away
    gapped = await follow(http, last_event_id=old)
    foreign = await follow(http, last_event_id="not-an-id-of-ours")
    task_id = await changes.app.enqueue("ok", {})
    # Not an id of ours: a gap, then the stream from now on.
    events = await foreign.until(2)
    assert (events[0].kind, events[0].data["gap"]) == ("gap", True)
    assert (events[1].data["task_id"], events[1].data["status"]) == (task_id, "queued")
    # Trimmed away: one gap, then what the feeds still hold (this module's earlier changes),
    # then the live ones.
    async with asyncio.timeout(10):
        while not any(e.kind == "status" and e.data["task_id"] == task_id for e in gapped.events):
            gapped.grew.clear()
            await gapped.grew.wait()
    assert [e.kind for e in gapped.events].count("gap") == 1
    assert gapped.events[0].kind == "gap"
    for stream in (gapped, foreign):
        await stream.close()


async def blocked_feed_reads(app: Spillway) -> int:
    """The connections blocked in an XREAD now, on every node (only feeds are read so)."""
    client = app.broker.client
    if isinstance(client, RedisCluster):
        listed: Any = await client.client_list(target_nodes=RedisCluster.ALL_NODES)
        clients = [c for node in listed.values() for c in node] if isinstance(
            listed, dict) else listed  # fmt: skip
    else:
        clients = await client.client_list()
    return sum(1 for c in clients if c["cmd"] == "xread" and "b" in c["flags"])


async def test_many_followers_in_one_process_share_one_read_of_each_shard(
    http: httpx.AsyncClient, changes: Changes
) -> None:
    streams = [await follow(http) for _ in range(12)]
    task_id = await changes.app.enqueue("ok", {})
    for stream in streams:
        assert [e.data["task_id"] for e in await stream.until(1)] == [task_id]
    # One blocking read per shard for the twelve. Polled: a reader that just got the change
    # is back in its read within moments, and a reader of the hub's previous start (the last
    # test's) may still be ending its last read, up to the server's block_ms.
    for _ in range(250):
        blocked = await blocked_feed_reads(changes.app)
        if blocked == SHARDS:
            break
        await asyncio.sleep(0.02)
    assert blocked == SHARDS
    for stream in streams:
        await stream.close()


async def test_unknown_queues_bad_filters_and_client_keys_are_refused_before_any_stream(
    secured_server: ApiServer, http: httpx.AsyncClient, changes: Changes
) -> None:
    missing = await http.get("/queues/nosuch/events")
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:spillway:problem:queue-not-found"
    bad = await http.get(f"/queues/{QUEUE}/events?status=finished")
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    long_type = await http.get(f"/queues/{QUEUE}/events?type={'x' * 201}")
    assert long_type.status_code == 422
    async with httpx.AsyncClient(base_url=secured_server.url, timeout=10) as secured:
        client = await secured.get(
            "/queues/default/events", headers={"Authorization": "Bearer key-one"}
        )
        assert client.status_code == 403
        assert (await secured.get("/queues/default/events")).status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        known = await secured.post("/tasks", json={"type": "echo", "payload": {}}, headers=admin)
        assert known.status_code == 202
        async with secured.stream("GET", "/queues/default/events", headers=admin) as r:
            assert r.status_code == 200
