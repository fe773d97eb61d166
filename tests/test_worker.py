"""The worker in one process: runs, sync handlers, retries and backoff, dead letters, timeouts,
claims, reclaim and stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from tests.engine import Item, drain, past_expiry, pending, read_everything, stream_lengths

from spillway import Settings, Spillway, TaskContext, TaskFailed, TaskStatus, Worker, metrics
from spillway.broker.keys import shard_of


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


async def test_a_cancelled_error_nobody_asked_for_is_a_failure_not_a_run_held_for_ever(
    app: Spillway,
) -> None:
    # A handler (or a library under it) that lets a CancelledError of its own out, while
    # nobody cancelled its run: re-raised, the run had no outcome and its delivery stayed
    # claimed and renewed by a live worker, so the task never ended (the burst worker below
    # would never see its queue drained).
    @app.task(max_retries=1, retry_base=0.01, retry_cap=0.01)
    async def leaky(item: Item) -> None:
        raise asyncio.CancelledError("from inside the handler")

    @app.task()
    async def fine(item: Item) -> int:
        return item.n

    task_id = await app.enqueue("leaky", {"n": 1})
    other = await app.enqueue("fine", {"n": 2})
    await drain(app)
    record = await app.get(task_id)
    assert record.status is TaskStatus.DEAD
    assert record.attempts == 2
    assert record.error is not None
    assert record.error.startswith("CancelledError"), record.error
    assert (await app.get(other)).status is TaskStatus.SUCCEEDED


@pytest.mark.parametrize("step", ["begin", "finish", "take"])
async def test_a_stray_cancellation_while_beginning_or_storing_loses_no_task(
    app: Spillway, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    # A CancelledError nobody asked for, out of the Redis call that begins a batch or stores
    # its outcomes (seen in chaos scenario 14 mid-failover): it ended the reader (restarted)
    # or the finisher, and the batch was dropped, its runs held (renewed) for ever. Now the
    # batch is tried again. A take (read and begun in one call) that loses its reply cannot be
    # tried again, as a read could not: its deliveries are reclaimed once their claims lapse.
    @app.task()
    async def fine(item: Item) -> int:
        return item.n

    ids = [await app.enqueue("fine", {"n": n}) for n in range(5)]
    original = getattr(app.broker.work, step)
    calls = 0

    async def stray_first(batch: Any, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError
        return await original(batch, *args)

    async def nothing(*args: Any) -> list[Any]:
        return []

    if step == "begin":
        # Every take finds nothing, so each task comes by the blocking read and is begun.
        monkeypatch.setattr(app.broker.work, "take", nothing)
    monkeypatch.setattr(app.broker.work, step, stray_first)
    await drain(app)
    assert calls >= 2
    for task_id in ids:
        record = await app.get(task_id)
        assert record.status is TaskStatus.SUCCEEDED
        # A lost take's deliveries are delivered again: a second delivery counts an attempt.
        assert record.attempts == 1 or (step == "take" and record.attempts == 2)


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


# --- expiry: a task not started by its deadline ends `expired`, unrun ----------------------------


async def test_a_task_not_started_by_its_expiry_ends_expired_and_never_runs(
    app: Spillway, redis: aioredis.Redis
) -> None:
    ran: list[int] = []

    @app.task
    async def job(item: Item) -> None:
        ran.append(item.n)

    stale = await app.enqueue("job", {"n": 1}, expires=0.05)
    fresh = await app.enqueue("job", {"n": 2}, expires=60)
    await past_expiry(app, stale)  # the surge: no worker reached it in time
    await drain(app)

    assert ran == [2]
    record = await app.get(stale)
    assert record.status is TaskStatus.EXPIRED
    assert record.terminal
    assert (record.attempts, record.started_at, record.result) == (0, None, None)
    assert record.finished_at is not None
    assert record.expires_at is not None
    assert record.finished_at >= record.expires_at
    assert (await app.get(fresh)).status is TaskStatus.SUCCEEDED
    with pytest.raises(TaskFailed) as failed:
        await app.result(stale, timeout=1)
    assert failed.value.status == "expired"
    stats = await app.stats()
    assert stats.counts["job"] == {"succeeded": 1, "expired": 1}
    assert (stats.queues[0].backlog, stats.queues[0].pending, stats.queues[0].dead) == (0, 0, 0)
    exposed = metrics.render(stats).decode()
    assert 'spillway_outcomes_stored_total{outcome="expired",type="job"} 1.0' in exposed
    assert await stream_lengths(app, redis) == 0


async def test_a_delayed_task_due_after_its_expiry_passed_ends_expired_unrun(
    app: Spillway,
) -> None:
    ran: list[int] = []

    @app.task
    async def job(item: Item) -> None:
        ran.append(item.n)

    # The expiry counts from the accept, not from the due time: no worker ran while it was
    # delayed, so by the time it is promoted its deadline has passed.
    task_id = await app.enqueue("job", {"n": 1}, delay=0.02, expires=0.05)
    await past_expiry(app, task_id)
    await drain(app)

    assert ran == []
    assert (await app.get(task_id)).status is TaskStatus.EXPIRED


async def test_a_task_that_started_in_time_is_retried_after_its_expiry_passed(
    app: Spillway,
) -> None:
    attempts: list[int] = []

    @app.task(max_retries=1, retry_base=0.7, retry_cap=0.7, retry_jitter=False, expires=0.5)
    async def flaky(item: Item, ctx: TaskContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("once")
        return "ok"

    worker = Worker(app)
    running = asyncio.create_task(worker.run())
    try:
        task_id = await app.enqueue("flaky", {"n": 1})  # read at once by the waiting worker
        # The retry is due 0.7 s after the first attempt: past the 0.5 s expiry.
        record = await app.wait(task_id, timeout=10)
    finally:
        worker.stop()
        await running

    assert attempts == [1, 2]
    assert record.expires_at is not None
    assert record.started_at is not None
    assert record.started_at > record.expires_at  # the second attempt's start
    assert record.status is TaskStatus.SUCCEEDED


async def test_a_task_whose_worker_vanished_mid_run_is_not_expired_on_redelivery(
    app: Spillway,
) -> None:
    @app.task(expires=0.5)
    async def job(item: Item) -> int:
        return item.n

    task_id = await app.enqueue("job", {"n": 9})
    await app.broker.work.begin(await read_everything(app, "ghost"))  # started, then vanished
    await past_expiry(app, task_id)
    await drain(app)  # reclaims after the 1 s visibility timeout

    record = await app.get(task_id)
    assert (record.status, record.attempts) == (TaskStatus.SUCCEEDED, 2)


@pytest.mark.parametrize("linger", [0.5, 0.0], ids=["linger", "none"])
async def test_under_load_a_reader_lets_the_linger_pass_and_reads_what_came_in_one_batch(
    settings: Settings, linger: float
) -> None:
    # A read that brought more than one task but less than a batch lets SPILLWAY_READ_LINGER
    # pass before the next: five tasks enqueued 20 ms apart meanwhile are read and begun
    # together (one `started_at`, begin.lua's clock). Without a linger each is read alone.
    app = Spillway(settings.model_copy(update={"read_linger": linger, "shards": 1}))

    @app.task
    async def noop(item: Item) -> None:
        return None

    worker = Worker(app, concurrency=100)
    running = asyncio.create_task(worker.run())
    try:
        first = await app.enqueue_many([(noop, {"n": i}) for i in range(3)])
        # A blocking read takes the first alone; the next read takes the other two.
        for result in first:
            await app.wait(str(result.task_id), timeout=10)
        ids = []
        for i in range(5):
            ids.append(await app.enqueue(noop, {"n": i}))
            await asyncio.sleep(0.02)
        started = set()
        for task_id in ids:
            record = await app.wait(task_id, timeout=10)
            assert record.status is TaskStatus.SUCCEEDED
            started.add(record.started_at)
        if linger:
            assert len(started) == 1
        else:
            assert len(started) >= 4  # 80 ms apart in all
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
        await app.close()
