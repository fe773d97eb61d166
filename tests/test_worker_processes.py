"""The engine's promises across real worker processes: many at once, killed, crashing, stopped."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from tests.procs import kill, output, spawn_worker, stop

from spillway import Spillway, TaskStatus
from spillway.broker import GROUP


def core_app(worker_env: dict[str, str], app: Spillway) -> Spillway:
    """The tests' view of tests.apps.core: same task names, same settings as the workers."""
    from tests.apps import core

    for name, task in core.app.tasks.items():
        app.tasks.setdefault(name, task)
    return app


async def runs(redis: aioredis.Redis, prefix: str) -> dict[str, int]:
    raw = await redis.hgetall(f"{prefix}:test:runs")
    return {str(k): int(v) for k, v in raw.items()}


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 20.0,
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Poll a cheap async predicate until it holds (bounded); `describe` explains a failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not reached in time\n{describe()}")


async def test_ten_thousand_tasks_on_four_processes_each_succeed_exactly_once(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    app = core_app(worker_env, app)
    ids: list[str] = []
    for start in range(0, 10_000, 1_000):
        results = await app.enqueue_many([("count", {}) for _ in range(start, start + 1_000)])
        ids += [r.task_id for r in results if r.task_id]
    assert len(ids) == 10_000

    proc = spawn_worker(worker_env, "--processes", "4", "--burst", "--concurrency", "50")
    assert proc.wait(120) == 0, output(proc)

    executions = await runs(redis, app.settings.prefix)
    assert len(executions) == 10_000
    assert set(executions.values()) == {1}
    log = [str(x) for x in await redis.lrange(f"{app.settings.prefix}:test:log", 0, -1)]
    pids = {line.split(":")[1] for line in log}
    assert len(pids) >= 2  # the work really was shared between processes
    statuses = set()
    for start in range(0, 10_000, 500):
        async with redis.pipeline(transaction=False) as pipe:
            for task_id in ids[start : start + 500]:
                pipe.hget(app.broker.keys.for_task(task_id).task(task_id), "status")
            statuses.update(await pipe.execute())
    assert statuses == {"succeeded"}
    for stream in app.broker.core.streams(["default"]):
        assert await redis.xlen(stream) == 0
        assert (await redis.xpending(stream, GROUP))["pending"] == 0


async def test_tasks_of_a_killed_worker_are_completed_by_another_after_the_visibility_timeout(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    app = core_app(worker_env, app)
    ids = [await app.enqueue("count", {"seconds": 3}) for _ in range(5)]
    victim = spawn_worker(worker_env, "--concurrency", "10")
    try:

        async def all_running() -> bool:
            # Running in the store is set before the handler starts; its own record of the run
            # comes after, so wait for that too.
            if set(await runs(redis, app.settings.prefix)) != set(ids):
                return False
            return all([(await app.get(i)).status is TaskStatus.RUNNING for i in ids])

        await wait_until(all_running, describe=lambda: output(victim))
    finally:
        kill(victim)

    survivor = spawn_worker(worker_env, "--burst")
    assert survivor.wait(60) == 0, output(survivor)
    for task_id in ids:
        record = await app.get(task_id)
        assert record.status is TaskStatus.SUCCEEDED, (record, output(survivor)[-3000:])
        assert record.attempts == 2
        assert record.result == 2  # the outcome written by the second delivery, once
    # Each task ran once before the kill and once after it.
    assert await runs(redis, app.settings.prefix) == dict.fromkeys(ids, 2)


async def test_a_task_that_kills_its_process_is_dead_lettered_after_its_attempt_limit(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    app = core_app(worker_env, app)
    poison = await app.enqueue("crash", {})  # max_retries=1: two attempts
    healthy = [await app.enqueue("count", {}) for _ in range(20)]

    supervisor = spawn_worker(worker_env, "--processes", "2", "--burst", "--concurrency", "4")
    assert supervisor.wait(90) == 0, output(supervisor)

    record = await app.get(poison)
    assert record.status is TaskStatus.DEAD
    assert record.attempts == 2
    assert record.error is not None
    assert "WorkerLost" in record.error
    assert (await runs(redis, app.settings.prefix))[poison] == 2
    assert [d.id for d in await app.dead_letters()] == [poison]
    for task_id in healthy:
        assert (await app.get(task_id)).status is TaskStatus.SUCCEEDED


async def test_sigterm_lets_running_tasks_finish_and_exits_zero(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    app = core_app(worker_env, app)
    # Long enough that none can finish (and free a slot) before SIGTERM, even on a busy machine.
    first = [await app.enqueue("count", {"seconds": 3.0}) for _ in range(3)]
    worker = spawn_worker(worker_env, "--concurrency", "3")

    async def running() -> bool:
        return all([(await app.get(i)).status is TaskStatus.RUNNING for i in first])

    try:
        await wait_until(running, describe=lambda: output(worker))
        later = [await app.enqueue("count", {}) for _ in range(3)]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        stop(worker)

    for task_id in first:
        assert (await app.get(task_id)).status is TaskStatus.SUCCEEDED
    # It stopped reading at SIGTERM: what came after waits, untouched, for the next worker.
    for task_id in later:
        assert (await app.get(task_id)).status is TaskStatus.QUEUED
    assert (await app.stats()).workers == []


async def test_a_paused_queue_stays_paused_for_a_restarted_worker_until_resumed(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    app = core_app(worker_env, app)
    await app.pause("default")
    ids = [await app.enqueue("count", {}) for _ in range(20)]
    first = spawn_worker(worker_env, "--concurrency", "4")
    await wait_until(lambda: _live(app, 1), describe=lambda: output(first))
    kill(first)  # the pause is in Redis, not in a worker
    second = spawn_worker(worker_env, "--concurrency", "4")
    beats: set[float] = set()

    async def beat_twice() -> bool:
        for w in (await app.stats()).workers:
            if w.pid == second.pid and w.last_seen is not None:
                beats.add(w.last_seen.timestamp())
        return len(beats) >= 2

    try:
        # Two heartbeats of the new worker: its readers have been running for a while.
        await wait_until(beat_twice, describe=lambda: output(second))
        assert await runs(redis, app.settings.prefix) == {}
        assert {(await app.get(t)).status for t in ids} == {TaskStatus.QUEUED}

        await app.resume("default")
        for task_id in ids:
            await app.wait(task_id, 20)
    finally:
        assert stop(second) == 0, output(second)
    assert await runs(redis, app.settings.prefix) == dict.fromkeys(ids, 1)


async def _live(app: Spillway, count: int) -> bool:
    return len((await app.stats()).workers) >= count
