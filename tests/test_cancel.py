"""Cancelling a running task: its handler stopped, one terminal record whatever races it, and
a cancel that outlives its worker, across real worker processes (and one worker in-process)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from tests.apps.cancel import started_key
from tests.engine import Item, pending, stream_lengths
from tests.procs import kill, output, spawn_worker, stop

from spillway import Spillway, TaskNotCancellable, TaskStatus, Worker
from spillway.broker.connection import pubsub_client

APP = "tests.apps.cancel:app"


def cancel_app(app: Spillway) -> Spillway:
    """The tests' view of tests.apps.cancel: same task names, same settings as the workers."""
    from tests.apps import cancel

    for name, task in cancel.app.tasks.items():
        app.tasks.setdefault(name, task)
    return app


async def started(redis: aioredis.Redis, app: Spillway, task_id: str, timeout: float = 30) -> None:
    """Block until the task's handler announced its run (`tests.apps.cancel.announce`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Short blocks: the client's socket timeout is 5 s.
        if await redis.blpop([started_key(app.settings.prefix, task_id)], timeout=2):
            return
    raise AssertionError(f"task {task_id} did not start within {timeout} s")


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def runs(redis: aioredis.Redis, app: Spillway) -> dict[str, int]:
    raw = await redis.hgetall(f"{app.settings.prefix}:test:runs")
    return {str(k): int(v) for k, v in raw.items()}


async def test_cancelling_a_running_async_task_cancels_its_handler_and_ends_it_cancelled(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    app = cancel_app(app)
    task_id = await app.enqueue("hang", {})
    worker = spawn_worker(worker_env, "--concurrency", "4", app=APP)
    try:
        await started(redis, app, task_id)
        asked = time.monotonic()
        requested = await app.cancel(task_id)
        assert requested.status is TaskStatus.RUNNING
        assert requested.cancel_requested_at is not None

        ended = await app.wait(task_id, timeout=10)
        # Delivered on the worker's next claim renewal: a third of the visibility timeout.
        assert time.monotonic() - asked < app.settings.visibility_timeout / 3 + 2
        assert ended.status is TaskStatus.CANCELLED
        assert ended.result is None
        assert await redis.lrange(f"{app.settings.prefix}:test:cancelled", 0, -1) == [task_id]

        # The worker carries on with other work.
        after = await app.enqueue("blink", {"max_ms": 0})
        assert await app.result(after, timeout=10) == "done"
    finally:
        assert stop(worker) == 0, output(worker)
    assert await runs(redis, app) == {task_id: 1, after: 1}
    assert (await app.broker.admin.counters())["hang"] == {"cancelled": 1}
    assert await stream_lengths(app, redis) == 0
    assert await pending(app, redis) == 0


async def test_a_sync_handler_polling_ctx_cancelled_stops_and_the_task_ends_cancelled(
    app: Spillway, worker_env: dict[str, str], tmp_path: Path
) -> None:
    app = cancel_app(app)
    task_id = await app.enqueue("poll", {"directory": str(tmp_path)})
    worker = spawn_worker(worker_env, "--concurrency", "2", app=APP)
    try:

        async def running() -> bool:
            return (tmp_path / f"{task_id}.started").exists()

        await wait_until(running, timeout=30)
        asked = time.monotonic()
        assert (await app.cancel(task_id)).status is TaskStatus.RUNNING
        ended = await app.wait(task_id, timeout=10)
        assert time.monotonic() - asked < app.settings.visibility_timeout / 3 + 2
    finally:
        assert stop(worker) == 0, output(worker)
    assert ended.status is TaskStatus.CANCELLED
    # It stopped because it was told, long before its own 30 s were up.
    assert (tmp_path / f"{task_id}.stopped").read_text() == "cancelled"
    assert (await app.broker.admin.counters())["poll"] == {"cancelled": 1}


async def test_a_cancel_racing_completion_always_leaves_one_terminal_record_counted_once(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    app = cancel_app(app)
    await app.connect()
    listener, owned = pubsub_client(app.broker.core.client, 5)
    pubsub = listener.pubsub()
    await pubsub.psubscribe(f"{{{app.settings.prefix}:*}}:done:*")
    worker = spawn_worker(worker_env, "--concurrency", "16", app=APP)
    asked: dict[str, str] = {}  # task id -> what its cancel answered
    listened: set[str] = set()  # marked by a waiter before they ended

    async def one() -> None:
        # Each handler finishes 0-15 ms after it starts; the cancel is sent when the start is
        # seen, so it lands before, at or after the finish script, iteration by iteration.
        task_id = await app.enqueue("blink", {"max_ms": 15})
        # Marked as a waiter marks it: a run's end is published only when someone listens.
        # (A run may end before the mark: a waiter then sees it ended, nothing is published.)
        status, marked = await app.broker.admin.status_for_wait(task_id)
        assert marked
        if status in ("queued", "running"):
            listened.add(task_id)
        await started(redis, app, task_id)
        await asyncio.sleep(random.uniform(0, 0.005))  # noqa: S311 - timing, not secrets
        try:
            record = await app.cancel(task_id)
            # Marked while running (the record read after may show it ended already), or
            # cancelled at once (never, here: the run had begun).
            asked[task_id] = "requested" if record.cancel_requested_at else "now"
        except TaskNotCancellable as exc:
            asked[task_id] = f"refused:{exc.status}"

    async def lane(n: int) -> None:
        for _ in range(n):
            await one()

    try:
        await asyncio.wait_for(asyncio.gather(*(lane(25) for _ in range(8))), 120)
        final = {i: (await app.wait(i, timeout=10)).status.value for i in asked}
    finally:
        assert stop(worker) == 0, output(worker)

    # The cancel and the finish were decided in Redis: a cancel that got there first always
    # ends the task cancelled (its result discarded), one that came late found it succeeded.
    assert len(asked) == 200
    for task_id, answer in asked.items():
        expected = {"requested": "cancelled", "refused:succeeded": "succeeded"}[answer]
        assert final[task_id] == expected, (task_id, answer, final[task_id])
    split = Counter(final.values())
    # Both sides of the race were hit.
    assert split["cancelled"] > 0, split
    assert split["succeeded"] > 0, split
    # Counted once each, and each terminal transition someone waited on published once.
    assert (await app.broker.admin.counters())["blink"] == dict(split)
    published: Counter[str] = Counter()
    deadline = time.monotonic() + 10
    while sum(published.values()) < len(listened) and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:
            published[str(message["channel"]).rsplit(":", 1)[1]] += 1
    extra = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3)
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    if owned:
        await listener.aclose()
    assert len(listened) > 100, len(listened)  # most were marked before they ended
    assert published == Counter(dict.fromkeys(listened, 1))
    assert extra is None
    assert set((await runs(redis, app)).values()) == {1}
    assert await stream_lengths(app, redis) == 0
    assert await pending(app, redis) == 0


async def test_a_cancel_to_a_task_whose_worker_was_killed_ends_it_cancelled_after_reclaim_unrun(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    app = cancel_app(app)
    task_id = await app.enqueue("hang", {})
    victim = spawn_worker(worker_env, "--concurrency", "4", app=APP)
    try:
        await started(redis, app, task_id)
    finally:
        kill(victim)
    requested = await app.cancel(task_id)  # nobody is there to deliver it to
    assert requested.status is TaskStatus.RUNNING

    survivor = spawn_worker(worker_env, "--burst", app=APP)
    assert survivor.wait(60) == 0, output(survivor)
    record = await app.get(task_id)
    assert record.status is TaskStatus.CANCELLED
    assert await runs(redis, app) == {task_id: 1}  # reclaimed, and not run again
    assert await redis.lrange(f"{app.settings.prefix}:test:cancelled", 0, -1) == []
    assert (await app.broker.admin.counters())["hang"] == {"cancelled": 1}
    assert await stream_lengths(app, redis) == 0
    assert await pending(app, redis) == 0


async def test_a_malformed_cancel_marker_or_record_does_not_stop_the_worker(
    app: Spillway, redis: aioredis.Redis
) -> None:
    running: dict[int, asyncio.Event] = {1: asyncio.Event(), 2: asyncio.Event()}

    @app.task
    async def wait_here(item: Item) -> int:
        if item.n in running:
            running[item.n].set()
            await asyncio.sleep(30)
        return item.n

    marked = await app.enqueue("wait_here", {"n": 1})
    clobbered = await app.enqueue("wait_here", {"n": 2})
    worker = Worker(app)
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in running.values())), 10)
        keys = app.broker.keys
        # Not a time Spillway writes: a mark all the same (its presence is what counts).
        await redis.hset(keys.for_task(marked).task(marked), "cancel_requested_at", "\xff junk")
        # A key of another type where a running task's record was.
        await redis.delete(keys.for_task(clobbered).task(clobbered))
        await redis.set(keys.for_task(clobbered).task(clobbered), "not a hash")

        async def marked_stopped() -> bool:
            raw = await redis.hget(keys.for_task(marked).task(marked), "status")
            return bool(raw == "cancelled")

        await wait_until(marked_stopped, timeout=10)
        later = await app.enqueue("wait_here", {"n": 3})
        assert await app.result(later, timeout=10) == 3  # the worker is still working
        assert not run.done()
    finally:
        worker.stop()
        await asyncio.wait_for(run, 20)
