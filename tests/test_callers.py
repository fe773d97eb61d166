"""Callers sharing a queue: a caller's tasks wait their turn (round-robin between callers
within a priority level), and a caller may hold at most its quota of a lane's waiting tasks;
the rest of the engine (cancel, bulk cancel, stats, burst drains) sees held tasks as waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from tests.engine import Item, drain

from spillway import CallerQuotaFull, Settings, Spillway, TaskStatus, Worker
from spillway.app import EnqueueItem
from spillway.bulk import CancelFilter


def fair(settings: Settings, **extra: object) -> Settings:
    return settings.model_copy(update={"fair_callers": True, **extra})


def starts(app: Spillway) -> list[str]:
    """`job` records the caller of each task in the order the worker starts them."""
    order: list[str] = []

    @app.task
    async def job(item: Item) -> None:
        order.append("small" if item.n < 0 else "big")

    return order


def flood(n: int, caller: str = "big") -> Iterator[EnqueueItem]:
    return (EnqueueItem("job", {"n": i}, caller=caller) for i in range(n))


async def small_one_after_a_flood(settings: Settings, flood_size: int) -> int:
    """How many tasks start before a small caller's one task, sent after a big caller's flood,
    with one worker starting one task at a time."""
    async with Spillway(settings) as app:
        order = starts(app)
        assert all(r.ok for r in await app.enqueue_many(flood(flood_size)))
        await app.enqueue("job", {"n": -1}, caller="small")
        await drain(app, concurrency=1)
        assert len(order) == flood_size + 1
        return order.index("small")


async def test_a_small_callers_task_starts_within_a_round_of_a_flood(settings: Settings) -> None:
    before = await small_one_after_a_flood(fair(settings), 300)
    # In its shard the small task starts third at the latest: after the big caller's first
    # task (it found the lane idle: started at once, never held) and, when the two callers'
    # round-1 tasks tie (lowest id first), the big caller's. The worker takes the shards in
    # turn, one start each, so at most two full turns and two more shards' starts go first.
    # (The bound was 2 x shards + 1, which missed that tie, until CI's cluster job met an 8.)
    assert before <= 3 * settings.shards - 1, before


async def test_without_fairness_the_small_task_waits_for_the_whole_flood(
    settings: Settings,
) -> None:
    # The control: the same traffic, first come first served (in its shard: a worker takes
    # the shards in turn, so at least half of that shard's share of the flood goes first).
    assert await small_one_after_a_flood(settings, 300) >= 300 // (2 * settings.shards)


async def test_callers_take_turns_and_each_callers_tasks_keep_their_order(
    settings: Settings,
) -> None:
    async with Spillway(fair(settings, shards=1)) as app:
        seen: list[int] = []

        @app.task
        async def job(item: Item) -> None:
            seen.append(item.n)

        for base, caller in ((0, "a"), (100, "b"), (200, "c")):
            items = [EnqueueItem("job", {"n": base + i}, caller=caller) for i in range(20)]
            assert all(r.ok for r in await app.enqueue_many(items))
        await drain(app, concurrency=1)
    assert len(seen) == 60
    assert seen[0] == 0  # it found the lane idle: started at once, never held
    for base in (0, 100, 200):  # first in, first out within each caller
        mine = [n for n in seen if base <= n < base + 100]
        assert mine == sorted(mine)
        assert len(mine) == 20
    # Then one task of each caller a round, until the first caller runs out.
    rounds = [seen[i : i + 3] for i in range(1, 58, 3)]
    assert all(sorted(n // 100 for n in r) == [0, 1, 2] for r in rounds), seen


async def test_a_callers_quota_refuses_that_caller_only(settings: Settings) -> None:
    s = fair(settings, fair_callers=False, caller_quota=0.1, backlog_limit=60 * settings.shards)
    async with Spillway(s) as app:
        starts(app)
        big = await app.enqueue_many(flood(40))
        refused = [r.error for r in big if not r.ok]
        # A shard lane holds 6 of big's tasks (a tenth of 60) and starts one more at once, its
        # first, while the lane is idle: the rest are refused, as big's, with a paced wait.
        assert sum(r.ok for r in big) <= 7 * settings.shards
        assert refused
        assert all(isinstance(e, CallerQuotaFull) for e in refused)
        assert all(1 <= e.retry_after <= 60 for e in refused if isinstance(e, CallerQuotaFull))
        # Another caller, and a task with no caller, still get in.
        small = [await app.enqueue("job", {"n": -i - 1}, caller="small") for i in range(5)]
        anyone = await app.enqueue("job", {"n": 99})
        stats = await app.stats()
        assert stats.queues[0].backlog == sum(r.ok for r in big) + 6
        await drain(app)
        for task_id in [*(r.task_id for r in big if r.task_id), *small, anyone]:
            assert (await app.get(task_id)).status == TaskStatus.SUCCEEDED
        # Drained: the caller's share is free again.
        assert (await app.enqueue_many(flood(3)))[0].ok


async def test_a_held_task_cancelled_while_it_waits_never_runs(settings: Settings) -> None:
    async with Spillway(fair(settings, shards=1)) as app:
        order = starts(app)
        ids = [r.task_id for r in await app.enqueue_many(flood(5)) if r.task_id]
        assert len(ids) == 5
        # ids[0] found the lane idle and went to the stream; the others are held.
        record = await app.cancel(ids[3])
        assert record.status == TaskStatus.CANCELLED
        await drain(app, concurrency=1)
        assert len(order) == 4
        assert [(await app.get(i)).status for i in ids].count(TaskStatus.SUCCEEDED) == 4


async def test_bulk_cancel_finds_held_tasks(settings: Settings) -> None:
    async with Spillway(fair(settings)) as app:
        order = starts(app)
        ids = [r.task_id for r in await app.enqueue_many(flood(30)) if r.task_id]
        cancelled, cursor = 0, None
        while True:
            page = await app.cancel_matching(CancelFilter(queue="default"), cursor=cursor, limit=7)
            cancelled += page.cancelled
            if not page.more:
                break
            cursor = page.cursor
        assert cancelled == 30
        await drain(app)
        assert order == []
        assert {(await app.get(i)).status for i in ids} == {TaskStatus.CANCELLED}


async def test_held_tasks_start_on_a_worker_that_was_idle(settings: Settings) -> None:
    """An idle worker blocks on the streams, where held tasks add no entry: the reads that
    start them (and the entry one more than needed) still reach it, with no new accept."""
    async with Spillway(fair(settings)) as app:
        order = starts(app)
        worker = Worker(app, concurrency=2)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(0.3)  # idle: blocked on its streams
            ids = [r.task_id for r in await app.enqueue_many(flood(50)) if r.task_id]
            await app.enqueue("job", {"n": -1}, caller="small")
            for task_id in ids:
                await app.wait(task_id, 10)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 30)
        assert order.count("big") == 50
        assert order.count("small") == 1


async def test_what_redis_holds_in_a_held_set_is_untrusted(
    settings: Settings, redis: aioredis.Redis
) -> None:
    s = fair(settings, shards=1)
    async with Spillway(s) as app:
        order = starts(app)
        shard = app.broker.core.keys.shard(0)
        ids = [r.task_id for r in await app.enqueue_many(flood(3)) if r.task_id]
        # Members naming no task, another key type under a task's name: dropped, not run.
        await redis.zadd(shard.held("default"), {"not-a-task": 0, "f" * 32: 0})
        await redis.set(shard.task("e" * 32), "x")
        await redis.zadd(shard.held("default"), {"e" * 32: 0})
        await redis.hset(shard.rounds("default"), "", "not a number")
        await drain(app, concurrency=1)
        assert len(order) == 3
        assert {(await app.get(i)).status for i in ids} == {TaskStatus.SUCCEEDED}


@pytest.mark.parametrize("shards", [1, 3])
async def test_stats_and_burst_drains_count_held_tasks(settings: Settings, shards: int) -> None:
    async with Spillway(fair(settings, shards=shards)) as app:
        starts(app)
        assert all(r.ok for r in await app.enqueue_many(flood(40)))
        assert (await app.stats()).queues[0].backlog == 40
        assert await app.broker.work.backlog(["default"]) == 40
        await drain(app)
        assert (await app.stats()).queues[0].backlog == 0
