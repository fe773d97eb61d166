"""Pausing a queue: accepts go on, workers start none of its tasks, running ones finish, and
resuming starts them; the state is in Redis, and what Redis holds there is untrusted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis
from tests.engine import Item, drain

from spillway import Settings, Spillway, TaskStatus, UnknownQueue, Worker


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> float:
    """Poll `check` until it holds (failing after `timeout` s); the seconds it took."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < timeout, "never happened"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


def two_queues(app: Spillway) -> list[int]:
    """`job` on the default queue and `other` on queue `other`; the values `job` ran with."""
    ran: list[int] = []

    @app.task
    async def job(item: Item) -> int:
        ran.append(item.n)
        return item.n

    @app.task(queue="other")
    async def other(item: Item) -> int:
        return item.n

    return ran


async def statuses(app: Spillway, ids: list[str]) -> list[TaskStatus]:
    return [(await app.get(i)).status for i in ids]


async def test_a_paused_queue_accepts_but_starts_nothing_until_it_is_resumed(
    app: Spillway,
) -> None:
    ran = two_queues(app)
    assert await app.pause("default") is True
    assert await app.pause("default") is False  # already paused: safe to repeat
    ids = [await app.enqueue("job", {"n": n}) for n in range(3)]
    async with running(Worker(app)):
        # The other queue runs: the worker is reading, just not the paused queue.
        assert await app.result(await app.enqueue("other", {"n": 9}), timeout=10) == 9
        assert await statuses(app, ids) == [TaskStatus.QUEUED] * 3
        assert ran == []
        assert (await app.stats()).paused == ["default"]

        assert await app.resume("default") is True
        for task_id in ids:
            await app.wait(task_id, 10)
    assert sorted(ran) == [0, 1, 2]
    assert await app.resume("default") is False
    assert (await app.stats()).paused == []


async def test_a_running_worker_notices_a_pause_within_one_check_and_one_read(
    app: Spillway, settings: Settings, redis: aioredis.Redis
) -> None:
    ran = two_queues(app)
    async with running(Worker(app)) as worker:
        assert await app.result(await app.enqueue("job", {"n": 0}), timeout=10) == 0
        await app.pause("default")
        noticed = await eventually(lambda: _holds("default" in worker.paused))
        assert noticed < 1.0  # the due-task check runs every 0.1 s
        ids = [await app.enqueue("job", {"n": n}) for n in range(1, 6)]
        # The other queue still runs: a full read cycle passes while the tasks wait.
        assert await app.result(await app.enqueue("other", {"n": 9}), timeout=10) == 9
        seconds, micros = await redis.time()
        resumed_at = seconds * 1000 + micros // 1000
        await app.resume("default")
        for task_id in ids:
            await app.wait(task_id, 10)
    assert sorted(ran) == [0, 1, 2, 3, 4, 5]
    # A reader blocked in XREADGROUP when the pause came may take one entry (COUNT 1 per lane)
    # as its wait ends: that is the one read cycle. Every other task started after the resume.
    early = []
    for task_id in ids:
        started = (await app.get(task_id)).started_at
        assert started is not None
        if started.timestamp() * 1000 < resumed_at:
            early.append(task_id)
    assert len(early) <= settings.shards


async def test_a_limited_types_readers_pause_with_their_queue(app: Spillway) -> None:
    ran: list[int] = []

    @app.task(concurrency=1, rate_limit="100/s")
    async def scarce(item: Item) -> int:
        ran.append(item.n)
        return item.n

    @app.task(queue="other")
    async def other(item: Item) -> int:
        return item.n

    await app.pause("default")
    held = await app.enqueue("scarce", {"n": 1})
    async with running(Worker(app)):
        assert await app.result(await app.enqueue("other", {"n": 2}), timeout=10) == 2
        assert (await app.get(held)).status is TaskStatus.QUEUED
        assert await app.broker.limits.held("scarce") == 0  # no slot taken while paused
        await app.resume("default")
        assert await app.result(held, timeout=10) == 1
    assert ran == [1]


async def test_a_task_running_when_its_queue_is_paused_finishes(app: Spillway) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @app.task
    async def slow(item: Item) -> int:
        started.set()
        await release.wait()
        return item.n

    task_id = await app.enqueue("slow", {"n": 4})
    async with running(Worker(app)):
        await asyncio.wait_for(started.wait(), 10)
        await app.pause("default")
        release.set()
        assert await app.result(task_id, timeout=10) == 4


async def test_a_burst_worker_drains_the_other_queues_and_leaves_a_paused_one_waiting(
    app: Spillway,
) -> None:
    ran = two_queues(app)
    await app.pause("default")
    held = await app.enqueue("job", {"n": 1})
    done = await app.enqueue("other", {"n": 2})

    await drain(app)

    assert (await app.get(done)).status is TaskStatus.SUCCEEDED
    assert (await app.get(held)).status is TaskStatus.QUEUED
    assert ran == []


async def test_the_pause_is_kept_in_redis_for_every_process(settings: Settings) -> None:
    async with Spillway(settings) as operator, Spillway(settings) as restarted:
        await operator.pause("default")
        assert await restarted.paused() == ["default"]
        assert (await restarted.stats()).paused == ["default"]


async def test_a_queue_no_task_uses_cannot_be_paused(app: Spillway) -> None:
    two_queues(app)
    with pytest.raises(UnknownQueue) as caught:
        await app.pause("nowhere")
    assert caught.value.known == ["default", "other"]
    with pytest.raises(UnknownQueue):
        await app.resume("nowhere")
    assert await app.paused() == []


async def test_malformed_members_of_the_paused_set_are_ignored(
    app: Spillway, redis: aioredis.Redis
) -> None:
    ran = two_queues(app)
    await redis.sadd(app.broker.keys.paused, "bad#lane", "", "x" * 65, "no spaces")
    task_id = await app.enqueue("job", {"n": 1})

    await drain(app)

    assert ran == [1]
    assert (await app.get(task_id)).status is TaskStatus.SUCCEEDED
    assert (await app.stats()).paused == []


async def test_a_paused_set_of_another_type_pauses_nothing_and_stops_no_promotion(
    app: Spillway, redis: aioredis.Redis
) -> None:
    ran = two_queues(app)
    await redis.set(app.broker.keys.paused, "not a set")
    task_id = await app.enqueue("job", {"n": 1}, delay=0.05)

    await drain(app)

    assert ran == [1]
    assert (await app.get(task_id)).status is TaskStatus.SUCCEEDED
    assert (await app.stats()).paused == []


async def _holds(value: bool) -> bool:
    return value
