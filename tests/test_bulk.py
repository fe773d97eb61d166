"""Bulk cancel: a filter selects waiting tasks by queue, type, priority and age; pages are
bounded, a dry run counts, each task is cancelled as `DELETE /tasks/{id}` does, and repeating
changes nothing more."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from tests.engine import Item

from spillway import FilterInvalid, Spillway, TaskStatus, UnknownQueue, UnknownTaskType, Worker
from spillway.bulk import CancelFilter, CancelPage


def declare(app: Spillway) -> None:
    @app.task
    async def resize(item: Item) -> int:
        return item.n

    @app.task
    async def mail(item: Item) -> int:
        return item.n

    @app.task(queue="other")
    async def report(item: Item) -> int:
        return item.n

    @app.task(concurrency=2)
    async def limited(item: Item) -> int:
        return item.n


async def sweep(
    app: Spillway, match: CancelFilter, *, limit: int = 500, dry_run: bool = False
) -> tuple[int, int, int, int]:
    """Every page of a bulk cancel: (pages, examined, matched, cancelled)."""
    pages = examined = matched = cancelled = 0
    cursor: str | None = None
    while True:
        page: CancelPage = await app.cancel_matching(
            match, cursor=cursor, limit=limit, dry_run=dry_run
        )
        pages += 1
        examined += page.examined
        matched += page.matched
        cancelled += page.cancelled
        assert page.examined <= limit
        if not page.more:
            return pages, examined, matched, cancelled
        cursor = page.cursor


async def status_of(app: Spillway, task_id: str) -> TaskStatus:
    return (await app.get(task_id)).status


async def test_a_filter_cancels_only_the_waiting_tasks_it_selects(app: Spillway) -> None:
    declare(app)
    low = [await app.enqueue("resize", {"n": n}, priority="low") for n in range(3)]
    normal = await app.enqueue("resize", {"n": 9})
    other_type = await app.enqueue("mail", {"n": 1}, priority="low")
    other_queue = await app.enqueue("report", {"n": 1})

    match = CancelFilter(queue="default", type="resize", priority="low")
    assert await sweep(app, match, dry_run=True) == (1, 4, 3, 0)
    assert [await status_of(app, t) for t in low] == [TaskStatus.QUEUED] * 3  # a dry run
    assert await sweep(app, match) == (1, 4, 3, 3)

    assert [await status_of(app, t) for t in low] == [TaskStatus.CANCELLED] * 3
    for kept in (normal, other_type, other_queue):
        assert await status_of(app, kept) is TaskStatus.QUEUED
    assert await sweep(app, match) == (1, 1, 0, 0)  # repeated: nothing more to cancel


async def test_delayed_and_retry_waiting_tasks_are_cancelled_too(app: Spillway) -> None:
    declare(app)
    delayed = await app.enqueue("mail", {"n": 1}, delay=3600)
    queued = await app.enqueue("mail", {"n": 2})

    assert await sweep(app, CancelFilter(type="mail")) == (1, 2, 2, 2)

    assert await status_of(app, delayed) is TaskStatus.CANCELLED
    assert await status_of(app, queued) is TaskStatus.CANCELLED
    assert sum(q.delayed + q.backlog for q in (await app.stats()).queues) == 0


async def test_a_limited_types_lanes_are_swept_by_its_type(app: Spillway) -> None:
    declare(app)
    held = [await app.enqueue("limited", {"n": n}) for n in range(3)]

    assert (await sweep(app, CancelFilter(type="limited")))[3] == 3

    assert [await status_of(app, t) for t in held] == [TaskStatus.CANCELLED] * 3


async def test_pages_are_bounded_and_a_sweep_that_cancels_as_it_goes_misses_none(
    app: Spillway,
) -> None:
    declare(app)
    ids = [await app.enqueue("resize", {"n": n}) for n in range(25)]
    ids += [await app.enqueue("resize", {"n": n}, delay=3600) for n in range(25)]

    pages, examined, matched, cancelled = await sweep(app, CancelFilter(queue="default"), limit=7)

    assert (examined, matched, cancelled) == (50, 50, 50)
    assert pages >= 50 // 7
    assert {await status_of(app, t) for t in ids} == {TaskStatus.CANCELLED}


async def test_due_members_sharing_one_score_are_each_read_once(
    app: Spillway, redis: aioredis.Redis
) -> None:
    declare(app)
    ids = [await app.enqueue("resize", {"n": n}, delay=3600) for n in range(12)]
    for task_id in ids:  # one due time for all: pages must page through ties by member
        shard = app.broker.keys.for_task(task_id)
        await redis.zadd(shard.due("default"), {task_id: 4_102_444_800_000})

    pages, examined, matched, _ = await sweep(
        app, CancelFilter(queue="default"), limit=5, dry_run=True
    )
    assert (examined, matched) == (12, 12)
    assert pages >= 3


async def test_age_is_the_time_since_accept(app: Spillway, redis: aioredis.Redis) -> None:
    declare(app)
    old = await app.enqueue("resize", {"n": 1})
    new = await app.enqueue("resize", {"n": 2})
    key = app.broker.keys.for_task(old).task(old)
    seconds, _ = await redis.time()
    await redis.hset(key, "created_at", (seconds - 700) * 1000)

    assert (await sweep(app, CancelFilter(older_than_s=600)))[2:] == (1, 1)

    assert await status_of(app, old) is TaskStatus.CANCELLED
    assert await status_of(app, new) is TaskStatus.QUEUED


async def test_a_running_task_is_skipped(app: Spillway) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @app.task
    async def slow(item: Item) -> int:
        started.set()
        await release.wait()
        return item.n

    task_id = await app.enqueue("slow", {"n": 1})
    worker = Worker(app, concurrency=1)
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert await sweep(app, CancelFilter(queue="default")) == (1, 1, 0, 0)
        release.set()
        assert await app.result(task_id, timeout=10) == 1
    finally:
        worker.stop()
        await run


async def test_a_bad_filter_is_refused_and_cancels_nothing(app: Spillway) -> None:
    declare(app)
    task_id = await app.enqueue("resize", {"n": 1})

    with pytest.raises(FilterInvalid):
        CancelFilter()
    with pytest.raises(FilterInvalid):
        CancelFilter(older_than_s=-1)
    with pytest.raises(UnknownQueue):
        await app.cancel_matching(CancelFilter(queue="nowhere"))
    with pytest.raises(UnknownTaskType):
        await app.cancel_matching(CancelFilter(type="nothing"))
    for cursor in ("", "x", "default|0|stream", "default|9|stream|", "default|0|due|abc",
                   "default|0|stream|1-x", "default|0|nothing|"):  # fmt: skip
        with pytest.raises(FilterInvalid):
            await app.cancel_matching(CancelFilter(queue="default"), cursor=cursor)
    with pytest.raises(FilterInvalid):
        await app.cancel_matching(CancelFilter(queue="default"), limit=1001)

    assert await status_of(app, task_id) is TaskStatus.QUEUED


async def test_entries_and_records_not_written_by_spillway_are_skipped(
    app: Spillway, redis: aioredis.Redis
) -> None:
    declare(app)
    task_id = await app.enqueue("resize", {"n": 1})
    shard = app.broker.keys.shard(0)
    await redis.xadd(shard.stream("default"), {"junk": "1"})
    await redis.xadd(shard.stream("default"), {"id": "f" * 32})  # no record
    await redis.zadd(shard.due("default"), {"not an id": 1, "e" * 32: 2})
    other = app.broker.keys.shard(0).task("d" * 32)
    await redis.xadd(shard.stream("default"), {"id": "d" * 32})
    await redis.set(other, "a string, not a record")

    _, examined, matched, cancelled = await sweep(app, CancelFilter(queue="default"))

    assert (matched, cancelled) == (1, 1)
    assert examined >= 6
    assert await status_of(app, task_id) is TaskStatus.CANCELLED
