"""The engine's promises, in one process: accept, run, retry, dead-letter, cancel, wait."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from spillway import (
    BacklogFull,
    BrokerUnavailable,
    EnqueueItem,
    IdempotencyConflict,
    OutcomeUnknown,
    PayloadInvalid,
    ResultTimeout,
    Settings,
    Spillway,
    TaskContext,
    TaskFailed,
    TaskNotCancellable,
    TaskNotFound,
    TaskStatus,
    UnknownTaskType,
    Worker,
)
from spillway.broker import GROUP, Delivery
from spillway.broker.keys import shard_of
from spillway.embedded import EmbeddedRedis


class Item(BaseModel):
    n: int


@contextlib.asynccontextmanager
async def own_server(
    settings: Settings, **redis: Any
) -> AsyncIterator[tuple[EmbeddedRedis, Spillway]]:
    """A Redis of this test's own (to kill, pause or fill) and an app on it, both closed after."""
    with EmbeddedRedis(**redis) as server:
        app = Spillway(settings.model_copy(update={"redis_url": server.url}))
        try:
            yield server, app
        finally:
            await app.close()


async def drain(app: Spillway, **kwargs: Any) -> Worker:
    """Run a burst worker until every queue is empty."""
    worker = Worker(app, burst=True, **kwargs)
    await asyncio.wait_for(worker.run(), 30)
    return worker


def stream_key(app: Spillway, queue: str = "default") -> str:
    """The stream of shard 0 (where tests inject entries by hand)."""
    return app.broker.keys.shard(0).stream(queue)


async def stream_lengths(app: Spillway, redis: aioredis.Redis) -> int:
    """Entries in every shard stream of the default queue."""
    return sum([await redis.xlen(s) for s in app.broker.core.streams(["default"])])


async def pending(app: Spillway, redis: aioredis.Redis) -> int:
    """Delivered-but-unacknowledged entries over every shard stream of the default queue."""
    return sum(
        [(await redis.xpending(s, GROUP))["pending"] for s in app.broker.core.streams(["default"])]
    )


async def read_everything(app: Spillway, consumer: str) -> list[Delivery]:
    """Read as `consumer` from each shard stream in turn (a read cannot span cluster slots)."""
    out: list[Delivery] = []
    for stream, where in app.broker.core.streams(["default"]).items():
        out += await app.broker.work.read(consumer, {stream: where}, 10, None)
    return out


async def test_enqueued_task_runs_and_its_result_is_stored(app: Spillway) -> None:
    @app.task
    async def double(item: Item) -> dict[str, int]:
        return {"n": item.n * 2}

    task_id = await app.enqueue("double", {"n": 21})
    assert (await app.get(task_id)).status is TaskStatus.QUEUED

    await drain(app)

    record = await app.get(task_id)
    assert record.status is TaskStatus.SUCCEEDED
    assert record.result == {"n": 42}
    assert record.attempts == 1
    assert record.payload == {"n": 21}
    assert record.created_at
    assert record.started_at
    assert record.finished_at
    assert record.created_at <= record.started_at <= record.finished_at
    assert record.finished_at.tzinfo is not None


async def test_sync_handler_runs_in_a_thread_and_gets_its_context(app: Spillway) -> None:
    import threading

    seen: list[tuple[str, int, bool]] = []

    @app.task
    def blocking(item: Item, ctx: TaskContext) -> int:
        seen.append(
            (ctx.task_id, ctx.attempt, threading.current_thread() is threading.main_thread())
        )
        return item.n

    task_id = await app.enqueue(blocking, {"n": 7})
    await drain(app)
    assert await app.result(task_id, timeout=1) == 7
    assert seen == [(task_id, 1, False)]


async def test_result_returns_as_soon_as_the_task_finishes(app: Spillway) -> None:
    release = asyncio.Event()

    @app.task
    async def gated(item: Item) -> int:
        await release.wait()
        return item.n

    task_id = await app.enqueue("gated", {"n": 3})
    worker = Worker(app)
    running = asyncio.create_task(worker.run())
    waiter = asyncio.create_task(app.result(task_id, timeout=20))
    await asyncio.sleep(0)
    assert not waiter.done()
    release.set()
    started = time.monotonic()
    assert await asyncio.wait_for(waiter, 5) == 3
    # Woken by the completion notice, not by a poll interval.
    assert time.monotonic() - started < 1.0
    worker.stop()
    await running


async def test_stop_completes_when_a_renewal_swallows_its_cancellation(
    app: Spillway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # During a shutdown, a claim renewal's Redis call once returned normally after its task had
    # been cancelled (the cancellation swallowed below it); the worker then never exited.
    renewing = asyncio.Event()

    async def swallowing_renew(self: Worker) -> None:
        renewing.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)

    monkeypatch.setattr(Worker, "_renew", swallowing_renew)
    worker = Worker(app)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(renewing.wait(), 10)
    worker.stop()

    done, _ = await asyncio.wait({running}, timeout=10)  # fails, not hangs, without the fix
    assert running in done, "the worker did not stop"
    await running


async def test_result_times_out_for_a_task_that_does_not_finish(app: Spillway) -> None:
    @app.task
    async def never(item: Item) -> None:
        return None

    task_id = await app.enqueue("never", {"n": 1})
    with pytest.raises(ResultTimeout):
        await app.result(task_id, timeout=0.2)


async def test_unknown_ids_are_not_found(app: Spillway) -> None:
    with pytest.raises(TaskNotFound):
        await app.get("0" * 32)
    with pytest.raises(TaskNotFound):
        await app.get("../../etc/passwd")


async def test_unknown_type_and_invalid_payload_enqueue_nothing(
    app: Spillway, redis: aioredis.Redis
) -> None:
    @app.task
    async def typed(item: Item) -> None:
        return None

    await app.connect()
    with pytest.raises(UnknownTaskType) as unknown:
        await app.enqueue("nope", {"n": 1})
    assert unknown.value.known == ["typed"]
    with pytest.raises(PayloadInvalid) as invalid:
        await app.enqueue("typed", {"n": "not a number"})
    assert invalid.value.errors[0]["loc"] == ["n"]
    assert await stream_lengths(app, redis) == 0


async def test_task_failing_twice_then_succeeding_ends_succeeded_after_backoff(
    app: Spillway,
) -> None:
    starts: list[float] = []

    @app.task(max_retries=3, retry_base=0.2, retry_cap=5, retry_jitter=False)
    async def flaky(item: Item) -> str:
        starts.append(time.monotonic())
        if len(starts) < 3:
            raise RuntimeError(f"failure {len(starts)}")
        return "ok"

    task_id = await app.enqueue("flaky", {"n": 1})
    await drain(app)

    record = await app.get(task_id)
    assert record.status is TaskStatus.SUCCEEDED
    assert record.result == "ok"
    assert record.attempts == 3
    # Without jitter the waits are exactly base * 2**(attempt-1): 0.2 s, then 0.4 s.
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.2
    assert gaps[1] >= 0.4


async def test_always_failing_task_is_dead_after_all_attempts_and_replay_runs_it_again(
    app: Spillway, redis: aioredis.Redis
) -> None:
    runs: list[int] = []
    healed = False

    @app.task(max_retries=3)
    async def broken(item: Item, ctx: TaskContext) -> str:
        runs.append(ctx.attempt)
        if not healed:
            raise ValueError("cannot do it")
        return "fixed"

    task_id = await app.enqueue("broken", {"n": 5})
    await drain(app)

    record = await app.get(task_id)
    assert record.status is TaskStatus.DEAD
    assert record.attempts == 4
    assert runs == [1, 2, 3, 4]
    assert record.error == "ValueError: cannot do it"
    assert record.traceback
    assert "cannot do it" in record.traceback
    with pytest.raises(TaskFailed):
        await app.result(task_id, timeout=1)

    dead = await app.dead_letters()
    assert [(d.id, d.attempts, d.error, d.payload) for d in dead] == [
        (task_id, 4, "ValueError: cannot do it", {"n": 5})
    ]
    assert "cannot do it" in dead[0].traceback

    healed = True
    assert await app.replay(task_id) is True
    assert await app.replay(task_id) is False  # already replayed: not twice
    assert await app.dead_letters() == []
    await drain(app)
    record = await app.get(task_id)
    assert record.status is TaskStatus.SUCCEEDED
    assert record.result == "fixed"
    assert await stream_lengths(app, redis) == 0


async def test_per_task_timeout_fails_the_run(app: Spillway) -> None:
    @app.task(max_retries=0, timeout=0.2)
    async def slow(item: Item) -> None:
        await asyncio.sleep(30)

    task_id = await app.enqueue("slow", {"n": 1})
    started = time.monotonic()
    await drain(app)
    assert time.monotonic() - started < 5
    record = await app.get(task_id)
    assert record.status is TaskStatus.DEAD
    assert record.error is not None
    assert record.error.startswith("TimeoutError")


async def test_backlog_over_its_limit_is_refused_and_nothing_is_trimmed(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # One shard: the limit is split evenly over shards, which would blur the exact count here.
    app = Spillway(settings.model_copy(update={"backlog_limit": 10, "shards": 1}))

    @app.task
    async def job(item: Item) -> int:
        return item.n

    ids = [await app.enqueue("job", {"n": i}) for i in range(10)]
    with pytest.raises(BacklogFull) as full:
        await app.enqueue("job", {"n": 10})
    assert full.value.retry_after > 0
    results = await app.enqueue_many([("job", {"n": i}) for i in range(5)])
    assert all(isinstance(r.error, BacklogFull) for r in results)
    assert await stream_lengths(app, redis) == 10

    await drain(app)
    assert [(await app.get(i)).result for i in ids] == list(range(10))
    # Room again once the backlog is worked off.
    assert await app.enqueue("job", {"n": 11})
    await app.close()


async def test_same_idempotency_key_gives_the_same_task_and_one_execution(
    app: Spillway,
) -> None:
    runs: list[str] = []

    @app.task
    async def charge(item: Item, ctx: TaskContext) -> int:
        runs.append(ctx.task_id)
        return item.n

    first = await app.enqueue("charge", {"n": 10}, idempotency_key="order-17")
    again = await asyncio.gather(
        *(app.enqueue("charge", {"n": 10}, idempotency_key="order-17") for _ in range(20))
    )
    assert set(again) == {first}
    with pytest.raises(IdempotencyConflict) as conflict:
        await app.enqueue("charge", {"n": 11}, idempotency_key="order-17")
    assert conflict.value.task_id == first

    await drain(app)
    assert runs == [first]
    # After completion the key still answers with the same task.
    assert await app.enqueue("charge", {"n": 10}, idempotency_key="order-17") == first


async def test_delayed_task_does_not_run_before_it_is_due(app: Spillway) -> None:
    ran_at: list[float] = []

    @app.task
    async def later(item: Item) -> None:
        ran_at.append(time.monotonic())

    enqueued = time.monotonic()
    task_id = await app.enqueue("later", {"n": 1}, delay=0.5)
    record = await app.get(task_id)
    assert record.status is TaskStatus.QUEUED
    assert record.due_at is not None
    await drain(app)
    assert ran_at
    assert ran_at[0] - enqueued >= 0.5
    assert (await app.get(task_id)).status is TaskStatus.SUCCEEDED


async def test_cancelled_task_never_runs_and_running_task_cannot_be_cancelled(
    app: Spillway, redis: aioredis.Redis
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    ran: list[int] = []

    @app.task
    async def step(item: Item) -> None:
        ran.append(item.n)
        if item.n == 1:
            started.set()
            await release.wait()

    doomed = await app.enqueue("step", {"n": 0}, delay=0.3)
    record = await app.cancel(doomed)
    assert record.status is TaskStatus.CANCELLED
    with pytest.raises(TaskNotCancellable):
        await app.cancel(doomed)

    running_id = await app.enqueue("step", {"n": 1})
    worker = Worker(app)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    with pytest.raises(TaskNotCancellable) as refused:
        await app.cancel(running_id)
    assert refused.value.status == "running"
    release.set()
    await app.wait(running_id, timeout=5)
    worker.stop()
    await run

    await asyncio.sleep(0.4)  # past the cancelled task's due time
    await drain(app)
    assert ran == [1]
    assert (await app.get(doomed)).status is TaskStatus.CANCELLED
    assert await stream_lengths(app, redis) == 0


async def test_cancelling_a_queued_task_wakes_its_waiters(app: Spillway) -> None:
    @app.task
    async def idle(item: Item) -> None:
        return None

    task_id = await app.enqueue("idle", {"n": 1})
    waiter = asyncio.create_task(app.wait(task_id, timeout=10))
    await asyncio.sleep(0.05)
    await app.cancel(task_id)
    record = await asyncio.wait_for(waiter, 2)
    assert record.status is TaskStatus.CANCELLED


async def test_finish_writes_one_outcome_for_a_duplicate_delivery(app: Spillway) -> None:
    @app.task
    async def once(item: Item) -> int:
        return item.n

    task_id = await app.enqueue("once", {"n": 1})
    broker = app.broker
    deliveries = await read_everything(app, "a")
    started = await broker.work.begin(deliveries)
    assert started[0] is not None
    from spillway.broker import Outcome

    first = Outcome(deliveries[0], "once", "succeeded", "1", attempts=1)
    second = Outcome(deliveries[0], "once", "succeeded", "2", attempts=1)
    assert await broker.work.finish([first]) == [True]
    assert await broker.work.finish([second]) == [False]
    assert (await app.get(task_id)).result == 1
    # Only the outcome that was written is counted.
    assert (await app.stats()).counts == {"once": {"succeeded": 1}}


async def test_unknown_types_are_dead_lettered_on_their_first_delivery(
    app: Spillway, redis: aioredis.Redis
) -> None:
    @app.task
    async def known(item: Item) -> None:
        return None

    # A task record naming a type no worker knows (written by a newer API, say).
    task_id = await app.enqueue("known", {"n": 1})
    await redis.hset(app.broker.keys.for_task(task_id).task(task_id), "type", "vanished")
    await drain(app)
    record = await app.get(task_id)
    assert record.status is TaskStatus.DEAD
    assert record.attempts == 1
    assert record.error is not None
    assert "UnknownTaskType" in record.error
    assert await stream_lengths(app, redis) == 0


async def test_entries_spillway_did_not_write_are_dead_lettered_unrun(
    app: Spillway, redis: aioredis.Redis, tmp_path: Path
) -> None:
    @app.task
    async def known(item: Item) -> None:
        return None

    await app.connect()
    canary = tmp_path / "pwned"
    # A pickle whose loading would create the canary file: Spillway must never unpickle it.
    blob = b"cos\nsystem\n(S'touch " + str(canary).encode() + b"'\ntR."
    stream = stream_key(app)
    await redis.xadd(stream, {"data": blob})  # no task id at all
    await redis.xadd(stream, {"id": blob})  # a "task id" that names no task
    await redis.xadd(stream, {"hello": "world"})
    await drain(app)

    assert not canary.exists()
    dead = await app.dead_letters()
    assert len(dead) == 3
    assert all(d.error.startswith("Malformed") for d in dead)
    assert await stream_lengths(app, redis) == 0
    assert await pending(app, redis) == 0
    assert await app.replay_all() == 0  # there is no task in them to run


async def test_enqueue_many_accepts_each_item_on_its_own(app: Spillway) -> None:
    @app.task
    async def add(item: Item) -> int:
        return item.n + 1

    results = await app.enqueue_many(
        [("add", {"n": 1}), ("add", {"n": "x"}), ("missing", {}), ("add", {"n": 3})]
    )
    assert [r.ok for r in results] == [True, False, False, True]
    assert isinstance(results[1].error, PayloadInvalid)
    assert isinstance(results[2].error, UnknownTaskType)
    await drain(app)
    ok = [r.task_id for r in results if r.task_id]
    assert [await app.result(i, timeout=1) for i in ok] == [2, 4]


async def test_one_batch_of_several_queues_and_keys_writes_each_task_where_it_belongs(
    app: Spillway,
) -> None:
    # One accept batch groups its tasks by shard and queue, and hands each task with an
    # idempotency key the key that is its own: interleaving them must not mix them up.
    @app.task(queue="fast")
    async def ping(item: Item) -> int:
        return item.n

    @app.task(queue="slow")
    async def pong(item: Item) -> int:
        return -item.n

    items = [
        EnqueueItem("ping", {"n": 1}, idempotency_key="a"),
        EnqueueItem("pong", {"n": 2}),
        EnqueueItem("ping", {"n": 3}, idempotency_key="b"),
        EnqueueItem("pong", {"n": 4}, idempotency_key="c", delay=60),
        EnqueueItem("ping", {"n": 1}, idempotency_key="a"),  # the first one again
        EnqueueItem("ping", {"n": 5}, idempotency_key="b"),  # key b, another request
        EnqueueItem("pong", {"n": 6}),
    ]
    results = await app.enqueue_many(items)
    first_a, plain, first_b, delayed, again_a, other_b, last = results
    assert again_a.duplicate
    assert again_a.task_id == first_a.task_id
    assert isinstance(other_b.error, IdempotencyConflict)
    assert other_b.error.task_id == first_b.task_id
    written = [first_a, plain, first_b, delayed, last]
    assert all(r.ok and not r.duplicate for r in written)
    assert len({r.task_id for r in written}) == 5

    records = [await app.get(cast(str, r.task_id)) for r in written]
    assert [(r.type, r.queue, r.payload) for r in records] == [
        ("ping", "fast", {"n": 1}), ("pong", "slow", {"n": 2}), ("ping", "fast", {"n": 3}),
        ("pong", "slow", {"n": 4}), ("pong", "slow", {"n": 6}),
    ]  # fmt: skip
    assert [r.status for r in records] == [TaskStatus.QUEUED] * 5
    assert records[3].due_at is not None
    assert all(r.due_at is None for r in records[:3])
    stats = {q.queue: (q.backlog, q.delayed) for q in (await app.stats()).queues}
    assert stats == {"fast": (2, 0), "slow": (2, 1)}


async def test_stats_show_backlog_dead_letters_live_workers_and_counts(app: Spillway) -> None:
    release = asyncio.Event()

    @app.task(max_retries=0)
    async def work(item: Item) -> None:
        if item.n < 0:
            raise ValueError("negative")
        await release.wait()

    for n in (1, 2, -1):
        await app.enqueue("work", {"n": n})
    stats = await app.stats()
    assert [(q.queue, q.backlog, q.pending, q.dead) for q in stats.queues] == [("default", 3, 0, 0)]

    worker = Worker(app, concurrency=8)
    run = asyncio.create_task(worker.run())
    for _ in range(100):
        stats = await app.stats()
        if stats.queues[0].dead == 1 and stats.queues[0].pending == 2 and stats.workers:
            break
        await asyncio.sleep(0.05)
    assert stats.queues[0].pending == 2
    assert stats.queues[0].dead == 1
    assert [w.name for w in stats.workers] == [worker.name]
    release.set()
    worker.stop()
    await run
    stats = await app.stats()
    assert stats.queues[0].backlog == 0
    assert stats.counts["work"] == {"succeeded": 2, "dead": 1}
    assert stats.workers == []  # deregistered on a clean stop


async def test_a_slow_task_keeps_its_claim_and_is_never_run_twice(app: Spillway) -> None:
    runs: list[str] = []

    # 2.5 s of work against a 1 s visibility timeout: renewal must keep other workers off it.
    @app.task(timeout=10)
    async def slow(item: Item, ctx: TaskContext) -> None:
        runs.append(ctx.task_id)
        await asyncio.sleep(2.5)

    task_id = await app.enqueue("slow", {"n": 1})
    first, second = Worker(app, burst=True), Worker(app, burst=True)
    await asyncio.wait_for(asyncio.gather(first.run(), second.run()), 30)
    assert runs == [task_id]
    assert (await app.get(task_id)).attempts == 1


async def test_equal_entry_ids_on_two_shards_are_two_claims(settings: Settings) -> None:
    # Entry ids are unique per stream only: two shards' streams hand out the same id when they
    # take an entry in the same millisecond. Each claim must be renewed and freed on its own.
    app = Spillway(settings.model_copy(update={"shards": 2}))
    runs: list[str] = []

    @app.task(timeout=10, max_retries=3)
    async def slow(item: Item, ctx: TaskContext) -> None:
        runs.append(ctx.task_id)
        # Shard 0's tasks end long before shard 1's claims would lapse without renewal.
        await asyncio.sleep(2.5 if shard_of(ctx.task_id, 2) else 0.1)

    try:
        entries: dict[str, str] = {}  # task id -> entry id
        for _ in range(5):  # one batch lands in one millisecond all but very rarely
            accepted = await app.enqueue_many([("slow", {"n": n}) for n in range(8)])
            for a in accepted:
                assert a.task_id is not None
                record = await app.broker.admin.get(a.task_id)
                assert record is not None
                entries[a.task_id] = record["entry"]
            if len(set(entries.values())) < len(entries):
                break
        assert len(set(entries.values())) < len(entries), "no entry id was shared by two shards"

        await asyncio.wait_for(Worker(app, burst=True, concurrency=50).run(), 60)
        assert sorted(runs) == sorted(entries)  # each ran once: no claim lapsed or was lost
        for task_id in entries:
            done = await app.get(task_id)
            assert (done.status, done.attempts) == (TaskStatus.SUCCEEDED, 1)
    finally:
        await app.close()


async def test_streams_outnumbering_the_slots_are_all_read_in_turn(settings: Settings) -> None:
    # Three shard streams, two slots: readers of empty streams block holding a slot each, and
    # must still let the third reader have one when its stream fills.
    app = Spillway(settings.model_copy(update={"shards": 3, "block_ms": 100}))

    @app.task
    async def job(item: Item) -> int:
        return item.n

    worker = Worker(app, concurrency=2)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.3)  # every reader has found its stream empty once
        accepted = await app.enqueue_many([("job", {"n": n}) for n in range(60)])
        ids = [a.task_id for a in accepted if a.task_id]
        assert len({shard_of(i, 3) for i in ids}) == 3
        results = await asyncio.wait_for(
            asyncio.gather(*(app.result(i, timeout=30) for i in ids)), 30
        )
        assert sorted(results) == list(range(60))
    finally:
        worker.stop()
        await running
        await app.close()


async def test_a_task_whose_worker_vanished_is_reclaimed_by_another(
    app: Spillway, redis: aioredis.Redis
) -> None:
    @app.task
    async def job(item: Item) -> int:
        return item.n

    task_id = await app.enqueue("job", {"n": 9})
    # A consumer that reads the entry and then disappears without a word.
    deliveries = await read_everything(app, "ghost")
    await app.broker.work.begin(deliveries)
    assert (await app.get(task_id)).status is TaskStatus.RUNNING

    await drain(app)  # waits out the 1 s visibility timeout, then reclaims
    record = await app.get(task_id)
    assert record.status is TaskStatus.SUCCEEDED
    assert record.attempts == 2
    assert await pending(app, redis) == 0


async def test_start_is_refused_against_a_redis_that_may_evict_keys(
    settings: Settings,
) -> None:
    from spillway.errors import EvictionPolicyError

    async with own_server(settings) as (server, app):
        client = aioredis.Redis.from_url(server.url)
        await client.config_set("maxmemory-policy", "allkeys-lru")
        await client.aclose()
        with pytest.raises(EvictionPolicyError):
            await app.connect()


async def test_idle_consumers_are_forgotten_only_when_they_hold_nothing(
    app: Spillway, redis: aioredis.Redis
) -> None:
    @app.task
    async def job(item: Item) -> None:
        return None

    await app.enqueue("job", {"n": 1})
    streams = app.broker.core.streams(["default"])
    stream = next(iter([s for s in streams if await redis.xlen(s)]))  # the task's shard
    await redis.xgroup_createconsumer(stream, GROUP, "gone-empty")
    await app.broker.work.read("gone-holding", {stream: streams[stream]}, 10, None)
    await asyncio.sleep(0.01)

    assert await app.broker.work.prune_consumers(["default"], idle_ms=0) == 1
    names = {c["name"] for c in await redis.xinfo_consumers(stream, GROUP)}
    assert names == {"gone-holding"}  # its delivery stays claimable


async def test_scripts_are_reloaded_after_redis_forgets_them(
    app: Spillway, redis: aioredis.Redis
) -> None:
    @app.task
    async def echo(payload: dict[str, str]) -> dict[str, str]:
        return payload

    first = await app.enqueue("echo", {"text": "before"})
    await redis.script_flush()
    # Non-ASCII text crosses the hand-packed wire format intact.
    second = await app.enqueue("echo", {"text": "après ✓ 🌊"})
    await redis.script_flush()
    await drain(app)
    assert await app.result(first, timeout=1) == {"text": "before"}
    assert await app.result(second, timeout=1) == {"text": "après ✓ 🌊"}


async def test_a_group_redis_runs_after_the_deadline_refuses_only_its_own_tasks(
    app: Spillway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One batch is one accept script call per shard and queue, each checking the deadline
    # when Redis runs it. If the deadline passes between two of them, the first wrote its
    # tasks: they are accepted, and only the second group's callers are refused.
    @app.task(queue="first")
    async def one(item: Item) -> None:
        return None

    @app.task(queue="second")
    async def two(item: Item) -> None:
        return None

    await app.connect()
    scripts = app.broker.core.scripts
    queue_script = scripts.queue
    late_streams = {shard.stream("second") for shard in app.broker.keys.all_shards()}

    def clock_passes_before_the_second(
        pipe: Any, name: str, keys: list[str], args: list[Any]
    ) -> None:
        if name == "accept" and keys[0] in late_streams:
            args = [*args[:2], 1, *args[3:]]  # its deadline: long past when Redis runs it
        queue_script(pipe, name, keys, args)

    monkeypatch.setattr(scripts, "queue", clock_passes_before_the_second)
    results = await app.enqueue_many([("one", {"n": 1}), ("two", {"n": 2}), ("one", {"n": 3})])
    monkeypatch.undo()

    first, second, third = results
    assert first.ok
    assert third.ok
    assert isinstance(second.error, BrokerUnavailable)
    assert not isinstance(second.error, OutcomeUnknown)  # Redis said: not written
    assert [(await app.get(cast(str, r.task_id))).queue for r in (first, third)] == ["first"] * 2
    stats = {q.queue: q.backlog for q in (await app.stats()).queues}
    assert stats == {"first": 2, "second": 0}


async def test_enqueue_many_with_redis_gone_refuses_each_item_quickly(settings: Settings) -> None:
    async with own_server(settings) as (server, app):

        @app.task
        async def job(item: Item) -> None:
            return None

        await app.connect()
        server.kill()
        started = time.monotonic()
        results = await app.enqueue_many([("job", {"n": i}) for i in range(600)])
        assert time.monotonic() - started < 3 * settings.redis_timeout * 2
        assert len(results) == 600
        assert all(isinstance(r.error, BrokerUnavailable) for r in results)
        with pytest.raises(BrokerUnavailable):
            await app.enqueue("job", {"n": 1})


async def test_workers_drain_a_redis_that_is_full(settings: Settings) -> None:
    big = settings.model_copy(update={"backlog_limit": 10**6})
    async with own_server(big, maxmemory="4mb") as (_, app):

        @app.task
        async def job(payload: dict[str, str]) -> None:
            return None

        accepted, refused = 0, None
        while refused is None and accepted < 10_000:
            try:
                await app.enqueue("job", {"pad": "x" * 2000})
                accepted += 1
            except BrokerUnavailable as exc:  # a full Redis refuses new work: 503, not a loss
                refused = exc
        assert refused is not None
        assert accepted > 100
        # The worker's scripts may write over maxmemory (they free more than they keep).
        worker = await drain(app)
        assert worker.processed == accepted
        assert (await app.stats()).queues[0].backlog == 0


async def test_a_503_from_a_frozen_redis_means_nothing_was_stored(settings: Settings) -> None:
    async with own_server(settings) as (server, app):

        @app.task
        async def job(item: Item) -> None:
            return None

        await app.enqueue("job", {"n": 0})  # the connection the next write will go over
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(OutcomeUnknown) as refused:  # it was sent: Redis may have run it
                await app.enqueue("job", {"n": 1})
            assert time.monotonic() - started <= settings.redis_timeout * 2 + 0.2
            # A write that could not even be sent (a new connection hangs) is a plain refusal.
            with pytest.raises(BrokerUnavailable) as certain:
                await app.enqueue("job", {"n": 2})
            assert not isinstance(certain.value, OutcomeUnknown)
        finally:
            server.resume()
        # Redis ran the accept script on waking, past its deadline: it wrote nothing.
        assert (await app.stats()).queues[0].backlog == 1
        assert refused.value.task_id is not None
        with pytest.raises(TaskNotFound):
            await app.get(refused.value.task_id)


async def test_the_first_commands_after_a_redis_restart_succeed(settings: Settings) -> None:
    async with own_server(settings) as (server, app):

        @app.task
        async def job(item: Item) -> None:
            return None

        task_id = await app.enqueue("job", {"n": 1})
        assert (await app.get(task_id)).status is TaskStatus.QUEUED  # a pooled connection
        server.kill()  # no persistence: it comes back empty
        await asyncio.to_thread(server.restart)  # the loop runs meanwhile, as a server's would
        # Each pooled connection Redis closed is replaced when taken, not failed once first.
        with pytest.raises(TaskNotFound):
            await app.get(task_id)
        assert (await app.stats()).queues[0].backlog == 0


async def test_a_task_written_after_its_caller_gave_up_is_reported(
    app: Spillway, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task
    async def job(item: Item) -> None:
        return None

    await app.connect()
    request = app.broker.accepts.prepare(app.resolve("job"), {"n": 1})
    waiting = app.broker.accepts.accept(request)
    # What the budget's timer does when Redis answers too late: the caller is answered 503.
    waiting.set_exception(BrokerUnavailable("Redis did not answer within 1 s"))
    with caplog.at_level("WARNING", logger="spillway.broker"):
        # Accepts are written in order: once a later one is answered, the first reply was read.
        await app.enqueue("job", {"n": 2})
    with pytest.raises(BrokerUnavailable):
        waiting.result()
    # Redis did write it (its reply came after the caller's answer), and the log says which.
    assert (await app.get(request.task_id)).status is TaskStatus.QUEUED
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(request.task_id in w and "503" in w for w in warnings), warnings


async def test_replay_finds_a_dead_letter_whose_record_has_expired(
    app: Spillway, redis: aioredis.Redis
) -> None:
    healed = False

    @app.task(max_retries=0)
    async def once_broken(item: Item) -> int:
        if not healed:
            raise ValueError("first time")
        return item.n

    task_id = await app.enqueue("once_broken", {"n": 1})
    await drain(app)
    assert (await app.get(task_id)).status is TaskStatus.DEAD
    await redis.delete(app.broker.keys.for_task(task_id).task(task_id))  # as its TTL would

    healed = True
    assert await app.replay(task_id) is True
    await drain(app)
    assert await app.result(task_id, timeout=1) == 1
