"""The feeds behind a queue's event stream (`spillway.feed`), through the Python API: what is
written and when, a follower that falls behind its process's ring, and hostile feed data."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.engine import drain

from spillway import Settings, Spillway, TaskStatus, UnknownQueue
from spillway.feed import FeedHub, decode, encode, follow
from spillway.records import QueueEvent


def declare(app: Spillway) -> None:
    @app.task
    async def job(payload: dict[str, Any]) -> None:
        return None


async def collect(events: AsyncIterator[QueueEvent], count: int) -> list[QueueEvent]:
    out: list[QueueEvent] = []
    async with asyncio.timeout(10):
        async for event in events:
            out.append(event)
            if len(out) == count:
                return out
    raise AssertionError(f"the stream ended after {len(out)} of {count} events")


def lives(events: list[QueueEvent]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(e.task_id, []).append(str(e.status))
    return out


async def feeds(app: Spillway) -> list[int]:
    """Whether each shard's feed exists (1) or not (0)."""
    client = app.broker.client
    return [int(await client.exists(s.feed)) for s in app.broker.keys.all_shards()]


def test_an_event_id_holds_every_shards_position_and_nothing_else_reads_as_one() -> None:
    positions = [(1_796_421_806_306, 0), (1_796_421_806_100, 3), (1_796_421_800_000, 0)]
    assert encode(positions) == "1796421806306.0.206-3.6306"
    assert decode(encode(positions), 3) == positions
    for foreign in ["", "x", "1.2", "12.3.4.5.6", "5.6.0", "1..2", "1.2-", "9" * 40 + ".0"]:
        assert decode(foreign, 3) is None, foreign  # wrong shard count, shape or size


async def test_nothing_is_written_to_a_feed_while_nobody_follows(app: Spillway) -> None:
    declare(app)
    await app.enqueue("job", {})
    await drain(app)
    assert await feeds(app) == [0] * app.settings.shards


async def test_a_follower_that_falls_behind_the_ring_catches_up_from_the_feeds(
    app: Spillway, settings: Settings
) -> None:
    declare(app)
    hub = FeedHub(app.broker.feed, settings.shards, block_ms=50, ring=5)
    joined = asyncio.Event()
    events = follow(hub, "default", joined=joined, timeout=30)
    first = asyncio.ensure_future(anext(events))
    await joined.wait()
    ids = [await app.enqueue("job", {"n": i}) for i in range(30)]
    await drain(app)  # 90 changes, while the follower reads none: the ring keeps 5
    try:
        seen = [await first, *await collect(events, 89)]
    finally:
        await events.aclose()
    assert lives(seen) == {i: ["queued", "running", "succeeded"] for i in ids}
    assert all(not e.gap for e in seen)
    assert not hub.running  # its one follower left: the readers stopped


async def test_junk_in_a_feed_is_skipped_and_a_feed_key_of_another_type_is_no_feed(
    app: Spillway, settings: Settings
) -> None:
    declare(app)
    shard = app.broker.keys.shard(0)
    client = app.broker.client
    # Someone with access to Redis put a string where a feed would be: the scripts take it
    # for no feed, and the tasks run.
    await client.set(shard.feed, "not a stream")
    await app.enqueue("job", {})
    await drain(app)
    assert await client.get(shard.feed) == "not a stream"

    joined = asyncio.Event()
    events = follow(app.feed, "default", statuses=[TaskStatus.QUEUED], joined=joined)
    first = asyncio.ensure_future(anext(events))
    await joined.wait()
    assert await client.type(shard.feed) == "stream"  # the follower replaced it with a feed
    junk: list[dict[Any, Any]] = [
        {"id": "x"},  # no status
        {"id": "x", "queue": "default", "type": "job", "status": "bogus", "attempts": "1"},
        {"id": "x", "queue": "default", "type": "job", "status": "queued", "attempts": "-1"},
        {"id": "x" * 65, "queue": "default", "type": "job", "status": "queued", "attempts": "0"},
        {"open": "1"},
    ]
    for fields in junk:
        await client.xadd(shard.feed, fields)
    task_id = await app.enqueue("job", {}, idempotency_key="k0")  # one shard or another
    try:
        event = await asyncio.wait_for(first, 10)
    finally:
        await events.aclose()
    assert (event.task_id, event.status, event.gap) == (task_id, TaskStatus.QUEUED, False)


async def test_the_python_api_follows_a_known_queue_and_refuses_an_unknown_one(
    app: Spillway,
) -> None:
    declare(app)
    with pytest.raises(UnknownQueue):
        await anext(app.queue_events("nosuch"))

    events = app.queue_events("default", types=["job"], timeout=30)
    first = asyncio.ensure_future(anext(events))
    for _ in range(500):  # until the process's readers run: from then on, nothing is missed
        if app.feed.running:
            break
        await asyncio.sleep(0.01)
    task_id = await app.enqueue("job", {})
    try:
        event = await asyncio.wait_for(first, 10)
    finally:
        await events.aclose()
    assert (event.task_id, event.task_type, event.status) == (task_id, "job", TaskStatus.QUEUED)
    assert not app.feed.running


async def test_a_feed_lost_while_followed_is_a_gap_for_its_followers(
    app: Spillway, settings: Settings
) -> None:
    declare(app)
    hub = FeedHub(app.broker.feed, settings.shards, block_ms=50, keep_every=0.05)
    joined = asyncio.Event()
    events = follow(hub, "default", joined=joined, timeout=30)
    pending = asyncio.ensure_future(anext(events))
    await joined.wait()
    # Redis lost the feeds (a restart without persistence, a FLUSHALL, an expiry while the
    # renewals failed): changes went unwritten until the next renewal made them again.
    await app.broker.client.delete(*(s.feed for s in app.broker.keys.all_shards()))
    try:
        gap = await asyncio.wait_for(pending, 10)
        task_id = await app.enqueue("job", {})
        after = await asyncio.wait_for(anext(events), 10)
    finally:
        await events.aclose()
    assert gap.gap
    assert (after.task_id, after.status) == (task_id, TaskStatus.QUEUED)
