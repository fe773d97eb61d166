"""Accepting tasks: deadlines Redis checks, and what a caller is told when Redis is gone,
frozen or late."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from tests.engine import Item, own_server

from spillway import BrokerUnavailable, OutcomeUnknown, Settings, Spillway, TaskNotFound, TaskStatus


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


async def test_a_python_enqueue_redis_ran_late_once_is_sent_again_and_written(
    app: Spillway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stall of this process (or of Redis) past the script's deadline refuses the write with
    # proof that nothing was written; the Python API tries once more rather than failing a
    # caller who has no 503 to retry on. (The HTTP route answers 503 + Retry-After instead.)
    @app.task
    async def job(item: Item) -> None:
        return None

    await app.connect()
    scripts = app.broker.core.scripts
    queue_script = scripts.queue
    armed = [True]  # the next accept runs late, once
    late = 0

    def the_armed_one_runs_late(pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        nonlocal late
        if name == "accept" and armed:
            armed.pop()
            late += 1
            args = [*args[:2], 1, *args[3:]]  # its deadline: long past when Redis runs it
        queue_script(pipe, name, keys, args)

    monkeypatch.setattr(scripts, "queue", the_armed_one_runs_late)
    one = await app.enqueue("job", {"n": 1})
    armed.append(True)
    many = await app.enqueue_many([("job", {"n": 2})])
    monkeypatch.undo()

    assert late == 2  # each was refused late once
    assert many[0].ok, many[0].error
    for task_id in (one, many[0].task_id):
        assert (await app.get(cast(str, task_id))).status is TaskStatus.QUEUED
    assert (await app.stats()).queues[0].backlog == 2  # each written once


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


async def test_a_stray_cancellation_of_a_write_is_an_unknown_outcome_and_the_next_is_written(
    app: Spillway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CancelledError nobody asked for, out of the Redis call of an accept batch (seen
    # mid-failover): it reached the caller as a CancelledError (a 500 through the API) and
    # ended the flusher. Now the caller gets OutcomeUnknown (503) and the next batch goes out.
    @app.task
    async def job(item: Item) -> None:
        return None

    writer = app.broker.accepts
    write = writer.write
    calls = 0

    async def stray_first(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError
        return await write(*args, **kwargs)

    await app.connect()
    monkeypatch.setattr(writer, "write", stray_first)
    with pytest.raises(OutcomeUnknown) as refused:
        await app.enqueue("job", {"n": 1})
    assert refused.value.task_id
    task_id = await app.enqueue("job", {"n": 2})
    assert (await app.get(task_id)).status is TaskStatus.QUEUED


@pytest.mark.parametrize(("linger", "most_writes"), [(0.25, 1), (0.0, 10)], ids=["linger", "none"])
async def test_under_load_the_tasks_arriving_during_the_linger_share_one_write(
    settings: Settings, linger: float, most_writes: int
) -> None:
    # After a write of more than one task, the next waits out SPILLWAY_ACCEPT_LINGER: ten
    # tasks arriving 10 ms apart within it go in one script call (one `created_at`, the
    # script's clock). Without a linger each goes alone.
    app = Spillway(settings.model_copy(update={"accept_linger": linger, "shards": 1}))

    @app.task
    async def noop(item: Item) -> None:
        return None

    try:
        await app.connect()
        await asyncio.gather(*(app.enqueue(noop, {"n": i}) for i in range(2)))  # one write

        async def later(i: int) -> str:
            await asyncio.sleep(0.01 * i)
            return await app.enqueue(noop, {"n": i})

        ids = await asyncio.gather(*(later(i) for i in range(10)))
        created = {(await app.get(task_id)).created_at for task_id in ids}
        if most_writes == 1:
            assert len(created) == 1
        else:
            assert len(created) >= 5  # 90 ms apart in all: a few may share a millisecond
    finally:
        await app.close()


async def test_one_caller_awaiting_one_task_after_another_never_waits_the_linger(
    settings: Settings,
) -> None:
    # Each write carries one task, so none waits: six awaited enqueues take a few ms, where
    # lingering would take 2.5 s.
    app = Spillway(settings.model_copy(update={"accept_linger": 0.5, "redis_timeout": 1.0}))

    @app.task
    async def noop(item: Item) -> None:
        return None

    try:
        await app.connect()
        started = time.monotonic()
        for i in range(6):
            await app.enqueue(noop, {"n": i})
        assert time.monotonic() - started < 0.5
    finally:
        await app.close()
