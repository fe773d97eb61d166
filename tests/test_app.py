"""The `Spillway` application in one process: enqueue, get, result, wait, cancel, idempotency,
enqueue_many, stats and replay."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timedelta
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from tests.engine import Item, drain, own_server, past_expiry, stream_lengths

from spillway import (
    BacklogFull,
    EnqueueItem,
    IdempotencyConflict,
    PayloadInvalid,
    ResultTimeout,
    Settings,
    Spillway,
    TaskContext,
    TaskNotCancellable,
    TaskNotFound,
    TaskStatus,
    UnknownTaskType,
    Worker,
)
from spillway.broker.keys import new_task_id


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


async def test_cancelled_task_never_runs_and_a_running_one_is_stopped(
    app: Spillway, redis: aioredis.Redis
) -> None:
    started = asyncio.Event()
    stopped: list[BaseException] = []
    ran: list[int] = []

    @app.task
    async def step(item: Item) -> None:
        ran.append(item.n)
        if item.n == 1:
            started.set()
            try:
                await asyncio.Event().wait()  # only a cancel ends it
            except asyncio.CancelledError as exc:
                stopped.append(exc)
                raise

    doomed = await app.enqueue("step", {"n": 0}, delay=0.3)
    record = await app.cancel(doomed)
    assert record.status is TaskStatus.CANCELLED
    assert record.cancel_requested_at is None  # ended at once: nothing to stop
    with pytest.raises(TaskNotCancellable):
        await app.cancel(doomed)

    running_id = await app.enqueue("step", {"n": 1})
    worker = Worker(app)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    with pytest.raises(TaskNotFound):  # another owner's running task: unknown, and unmarked
        await app.cancel(running_id, owner="someone-else")
    assert (await app.get(running_id)).cancel_requested_at is None
    requested = await app.cancel(running_id)
    assert requested.status is TaskStatus.RUNNING
    assert requested.cancel_requested_at is not None
    again = await app.cancel(running_id)  # asking twice is harmless, and keeps the first time
    assert again.cancel_requested_at == requested.cancel_requested_at
    ended = await app.wait(running_id, timeout=5)
    assert ended.status is TaskStatus.CANCELLED
    assert ended.result is None
    assert len(stopped) == 1
    with pytest.raises(TaskNotCancellable):
        await app.cancel(running_id)
    worker.stop()
    await run

    await asyncio.sleep(0.4)  # past the cancelled task's due time
    await drain(app)
    assert ran == [1]
    assert (await app.get(doomed)).status is TaskStatus.CANCELLED
    assert await stream_lengths(app, redis) == 0
    assert (await app.stats()).counts["step"] == {"cancelled": 2}


async def test_an_end_is_published_only_for_a_task_someone_waits_on(
    app: Spillway, redis: aioredis.Redis
) -> None:
    # finish.lua publishes a run's end only when a waiter (wait.lua) or a watcher marked the
    # record: a task nobody waits for costs no PUBLISH; a waited one wakes its waiter.
    @app.task
    async def quick(item: Item) -> int:
        return item.n

    pubsub = redis.pubsub()
    await pubsub.psubscribe(f"{{{app.settings.prefix}:*}}:done:*")
    alone, waited = await app.enqueue("quick", {"n": 1}), await app.enqueue("quick", {"n": 2})
    assert await app.broker.admin.status_for_wait(waited) == ("queued", True)
    await drain(app)
    published = []
    deadline = time.monotonic() + 1  # what was published is in by then
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            published.append((str(message["channel"]).rsplit(":", 1)[1], str(message["data"])))
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert published == [(waited, "succeeded")]
    assert (await app.get(alone)).status is TaskStatus.SUCCEEDED
    # An ended task is not marked (nothing of it is left to publish).
    assert await app.broker.admin.status_for_wait(alone) == ("succeeded", True)
    assert await redis.hget(app.broker.keys.for_task(alone).task(alone), "waited") is None
    assert await app.broker.admin.status_for_wait(new_task_id()) == (None, True)


async def test_a_waiter_whose_mark_could_not_be_written_polls_and_still_sees_the_end(
    app: Spillway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before Redis 7.0 a full Redis refuses wait.lua's mark (no allow-oom flag): its end is
    # then never published, so the waiter reads the status again every Waiters.POLL seconds.
    @app.task
    async def quick(item: Item) -> int:
        return item.n

    task_id = await app.enqueue("quick", {"n": 1})
    admin = app.broker.admin

    async def unmarked(task_id: str) -> tuple[str | None, bool]:
        status = await app.broker.client.hget(app.broker.keys.for_task(task_id).task(task_id),
                                              "status")  # fmt: skip
        return (None if status is None else str(status)), False

    monkeypatch.setattr(admin.waiters, "_status", unmarked)
    waiting = asyncio.create_task(app.wait(task_id, timeout=20))
    await drain(app)
    started = time.monotonic()
    record = await asyncio.wait_for(waiting, 5)
    assert record.status is TaskStatus.SUCCEEDED
    assert time.monotonic() - started < 5  # a poll, not the 20 s timeout


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


async def commands(redis: aioredis.Redis) -> dict[str, int]:
    """Calls of each command the server ran so far (INFO's own left out)."""
    info = await redis.info("commandstats")
    return {k: int(v["calls"]) for k, v in info.items() if k != "cmdstat_info"}


async def test_replaying_an_unknown_id_costs_a_few_commands_however_many_dead_letters(
    settings: Settings,
) -> None:
    async with own_server(settings) as (server, app):

        @app.task(max_retries=0)
        async def work(item: Item) -> None:
            pass

        await app.connect()
        redis = aioredis.Redis.from_url(server.url)
        dead = app.broker.keys.shard(0).dead("default")
        costs = []
        try:
            for letters in (10, 5_000):
                async with redis.pipeline(transaction=False) as pipe:
                    for _ in range(letters - await redis.xlen(dead)):
                        pipe.xadd(dead, {"id": new_task_id(), "type": "t", "queue": "default",
                                         "payload": "{}", "policy": "0|1.0|1.0|1.0"})  # fmt: skip
                    await pipe.execute()
                before = await commands(redis)
                assert await app.replay(new_task_id()) is False
                assert await app.replay("not-a-task-id") is False
                after = await commands(redis)
                costs.append({k: n - before.get(k, 0) for k, n in after.items()
                              if n != before.get(k, 0)})  # fmt: skip
        finally:
            await redis.aclose()

    assert costs[0] == costs[1]  # the same commands with 10 dead letters as with 5,000
    # One HGETALL and one SMEMBERS, then one HGET of the dead-letter index per lane and shard.
    assert sum(costs[1].values()) <= 2 + len(app.lanes()) * app.settings.shards
    assert not [k for k in costs[1] if "range" in k or "scan" in k]  # no dead letter is read


async def test_a_malformed_id_is_refused_without_asking_redis(settings: Settings) -> None:
    async with own_server(settings) as (server, app):
        await app.connect()
        redis = aioredis.Redis.from_url(server.url)
        try:
            before = await commands(redis)
            for task_id in ("", "x" * 32, "A" * 32, "0" * 31, "../" + "0" * 29):
                assert await app.replay(task_id) is False
            after = await commands(redis)
        finally:
            await redis.aclose()

    assert after == before


# --- expiry --------------------------------------------------------------------------------------


@pytest.mark.parametrize("expires", [-1, 0, float("nan"), float("inf"), 367 * 86_400, "5", True])
def test_a_bad_default_expiry_fails_at_decoration_time(app: Spillway, expires: object) -> None:
    async def job(item: Item) -> None:
        return None

    with pytest.raises(ValueError, match="expires="):
        app.task(expires=expires)(job)  # type: ignore[call-overload]
    assert app.tasks == {}


async def test_a_bad_or_shorter_than_delay_expiry_enqueues_nothing(
    app: Spillway, redis: aioredis.Redis
) -> None:
    @app.task(expires=timedelta(seconds=30))
    async def job(item: Item) -> None:
        return None

    for options in (
        {"expires": -1},
        {"expires": 0},
        {"expires": float("nan")},
        {"delay": 30},  # the type's default expiry is no longer than the delay
        {"delay": 5, "expires": timedelta(seconds=5)},
    ):
        with pytest.raises(PayloadInvalid) as refused:
            await app.enqueue("job", {"n": 1}, **options)
        assert refused.value.errors[0]["loc"] == ["expires"], options
    results = await app.enqueue_many([EnqueueItem("job", {"n": 1}, delay=60)])
    assert isinstance(results[0].error, PayloadInvalid)
    assert await stream_lengths(app, redis) == 0

    # A task's own expiry replaces the type's default, and counts from the accept.
    task_id = await app.enqueue("job", {"n": 1}, delay=40, expires=timedelta(minutes=1))
    record = await app.get(task_id)
    assert record.created_at is not None
    assert record.expires_at is not None
    assert (record.expires_at - record.created_at).total_seconds() == 60


async def test_a_task_without_expiry_stores_no_expiry_field(
    app: Spillway, redis: aioredis.Redis
) -> None:
    @app.task
    async def job(item: Item) -> None:
        return None

    task_id = await app.enqueue("job", {"n": 1})
    key = app.broker.keys.for_task(task_id).task(task_id)
    assert "expires_at" not in await redis.hkeys(key)  # no Redis CPU spent on it
    assert (await app.get(task_id)).expires_at is None


async def test_an_idempotency_key_reused_with_another_expiry_is_a_conflict(app: Spillway) -> None:
    @app.task
    async def job(item: Item) -> None:
        return None

    first = await app.enqueue("job", {"n": 1}, idempotency_key="k", expires=60)
    assert await app.enqueue("job", {"n": 1}, idempotency_key="k", expires=60) == first
    with pytest.raises(IdempotencyConflict):
        await app.enqueue("job", {"n": 1}, idempotency_key="k", expires=120)


async def test_waiting_on_a_task_wakes_when_it_expires(app: Spillway) -> None:
    @app.task
    async def job(item: Item) -> None:
        raise AssertionError("an expired task must not run")

    task_id = await app.enqueue("job", {"n": 1}, expires=0.05)
    waiter = asyncio.create_task(app.wait(task_id, timeout=30))
    await past_expiry(app, task_id)
    worker = Worker(app)
    running = asyncio.create_task(worker.run())
    try:
        record = await asyncio.wait_for(waiter, 10)  # woken by begin's notice, not the timeout
    finally:
        worker.stop()
        await running
    assert record.status is TaskStatus.EXPIRED


# --- retry classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("retry_on", 42, "retry_on=42: expected a tuple or list"),
        ("retry_on", "ValueError", "retry_on='ValueError': expected a tuple or list"),
        ("retry_on", (int,), "retry_on: <class 'int'> is not an exception class"),
        ("no_retry_for", [ValueError, None], "no_retry_for: None is not an exception class"),
        ("no_retry_for", int, "no_retry_for: <class 'int'> is not an exception class"),
    ],
)
def test_a_bad_retry_classification_is_a_type_error_when_the_task_is_declared(
    app: Spillway, option: str, value: Any, named: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(named)):
        app.task(**{option: value})  # before any handler is given, as expires= is
    assert app.tasks == {}


def test_retry_classification_takes_one_class_a_tuple_or_a_list(app: Spillway) -> None:
    @app.task(retry_on=ConnectionError, no_retry_for=[ConnectionRefusedError])
    def call(item: Item) -> None: ...

    @app.task
    def plain(item: Item) -> None: ...

    assert (app.tasks["call"].retry_on, app.tasks["call"].no_retry_for) == (
        (ConnectionError,), (ConnectionRefusedError,),
    )  # fmt: skip
    # The defaults: every Exception is retried, none is excluded.
    assert (app.tasks["plain"].retry_on, app.tasks["plain"].no_retry_for) == ((Exception,), ())
