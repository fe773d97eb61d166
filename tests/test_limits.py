"""Concurrency and rate limits per task type across worker processes, and priorities.

The limit tests run real worker processes (`tests.apps.limited`) and read an execution log the
handlers write to Redis: start and end times, the most runs of a type ever under way at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from rich.console import Console
from tests.apps.limited import counters
from tests.procs import kill, output, spawn_worker
from tests.test_worker_processes import wait_until

from spillway import Spillway, TaskStatus, Worker, metrics, views
from spillway.lanes import PRIORITIES
from spillway.limits import RateLimit, TypeLimits

LIMITED = "tests.apps.limited:app"


def limited_app(app: Spillway) -> Spillway:
    """The tests' view of tests.apps.limited: same task names and limits as the workers."""
    from tests.apps import limited

    for name, task in limited.app.tasks.items():
        app.tasks.setdefault(name, task)
    return app


async def events(redis: aioredis.Redis, prefix: str) -> list[tuple[float, str, str, str]]:
    """(time, start|end, type, task id) of every run, in the order they were written."""
    out = []
    for raw in await redis.lrange(f"{prefix}:test:events", 0, -1):
        at, what, task_type, task_id = str(raw).split()
        out.append((float(at), what, task_type, task_id))
    return out


async def statuses(app: Spillway, ids: list[str]) -> set[TaskStatus]:
    return {(await app.get(i)).status for i in ids}


async def test_a_concurrency_limit_holds_across_processes_while_other_types_run_freely(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    app = limited_app(app)
    limited = await app.enqueue_many([("limited", {"seconds": 0.05}) for _ in range(45)])
    free = await app.enqueue_many([("free", {}) for _ in range(300)])
    ids = [r.task_id for r in [*limited, *free] if r.task_id]

    proc = spawn_worker(
        worker_env, "--processes", "2", "--concurrency", "20", "--burst", app=LIMITED
    )
    assert proc.wait(120) == 0, output(proc)

    prefix = app.settings.prefix
    most = counters(prefix, "limited")[1]
    assert int(await redis.get(most) or 0) == 3  # reached, never passed
    runs = await redis.hgetall(f"{prefix}:test:runs")
    assert len(runs) == 45
    assert set(runs.values()) == {"1"}
    assert await statuses(app, ids) == {TaskStatus.SUCCEEDED}
    log = await events(redis, prefix)
    # The unlimited type was not held up behind the limited one: it was done long before.
    last_free = max(at for at, what, t, _ in log if t == "free")
    last_limited = max(at for at, what, t, _ in log if t == "limited")
    assert last_free < last_limited - 0.3
    assert await app.broker.limits.held("limited") == 0  # every slot given back


async def test_a_killed_worker_frees_its_slots_and_loses_nothing(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    app = limited_app(app)
    # The first two (in line first) hold both slots, their first attempt long enough to be
    # killed mid-run; a retry is quick. The two behind them wait for a slot.
    # Long enough (0.5 s) that the second worker runs them together even when they sit on two
    # shards read by two readers (a cluster): the most seen must reach the limit.
    work = [("pair", {"seconds": 30, "sleep_on": 1})] * 2 + [("pair", {"seconds": 0.5})] * 2
    ids = [r.task_id for r in await app.enqueue_many(work) if r.task_id]
    env = {**worker_env, "SPILLWAY_VISIBILITY_TIMEOUT": "1.5"}
    first = spawn_worker(env, "--concurrency", "10", app=LIMITED)
    running, most = counters(app.settings.prefix, "pair")
    try:

        async def two_running() -> bool:
            # Both runs counted too: a kill between a run's start and its count would leave
            # its first attempt out of `runs`.
            counted = await redis.hlen(f"{app.settings.prefix}:test:runs")
            return int(await redis.get(running) or 0) == 2 and counted == 2

        await wait_until(two_running, describe=lambda: output(first))
        assert await app.broker.limits.held("pair") == 2
    finally:
        kill(first)
    # The killed runs never ended: count the runs under way afresh, for the second worker.
    await redis.delete(running, most)

    second = spawn_worker(env, "--concurrency", "10", "--burst", app=LIMITED)
    assert second.wait(60) == 0, output(second)
    assert await statuses(app, ids) == {TaskStatus.SUCCEEDED}
    assert int(await redis.get(most) or 0) == 2
    runs = {k: int(v) for k, v in (await redis.hgetall(f"{app.settings.prefix}:test:runs")).items()}
    assert sorted(runs.values()) == [1, 1, 2, 2]  # the two killed mid-run ran again, once
    assert await app.broker.limits.held("pair") == 0


async def test_a_rate_limit_spreads_starts_evenly_across_processes(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    app = limited_app(app)
    ids = [
        r.task_id for r in await app.enqueue_many([("rated", {}) for _ in range(100)]) if r.task_id
    ]

    proc = spawn_worker(
        worker_env, "--processes", "2", "--concurrency", "20", "--burst", app=LIMITED
    )
    assert proc.wait(120) == 0, output(proc)

    assert await statuses(app, ids) == {TaskStatus.SUCCEEDED}
    starts = sorted(at for at, what, _, _ in await events(redis, app.settings.prefix))
    assert len(starts) == 100
    # 10/s with no burst: 100 starts take at least 9.9 s, and no second holds more than 10
    # (+1: the window's ends are both counted). Tolerance stated in docs/limits.md.
    assert starts[-1] - starts[0] >= 9.9 - 0.05
    most_in_a_second = max(
        sum(1 for t in starts[i:] if t < start + 1.0) for i, start in enumerate(starts)
    )
    assert most_in_a_second <= 11
    assert starts[-1] - starts[0] <= 9.9 * 1.25  # and not much slower than the limit


async def test_a_high_priority_task_starts_ahead_of_a_low_backlog(app: Spillway) -> None:
    order: list[str] = []
    started = asyncio.Event()

    @app.task(priority="low")
    async def bulk(payload: Any) -> None:
        order.append("low")
        started.set()
        await asyncio.sleep(0.002)

    @app.task
    async def urgent(payload: Any) -> None:
        order.append("high")

    await app.enqueue_many([(bulk, {}) for _ in range(2_000)])
    worker = Worker(app, concurrency=4)
    running = asyncio.create_task(worker.run())
    try:
        await started.wait()
        before = len(order)
        task_id = await app.enqueue(urgent, {}, priority="high")
        await app.wait(task_id, 10)
    finally:
        worker.stop()
        await running

    # Once enqueued, it waited for at most one read of the low lane (batch_size deliveries
    # plus the runs under way), not for the 2,000 low tasks ahead of it.
    position = order.index("high")
    assert position - before <= app.settings.batch_size + 4
    assert (await app.get(task_id)).status is TaskStatus.SUCCEEDED


async def test_lower_priorities_keep_a_share_while_higher_ones_are_busy(app: Spillway) -> None:
    order: list[str] = []

    def handler(level: str) -> Any:
        async def run(payload: Any) -> None:
            order.append(level)

        run.__name__ = f"at_{level}"
        return run

    for level in PRIORITIES:
        app.task(priority=level)(handler(level))
    items: list[tuple[str, Any]] = [(f"at_{p}", {}) for p in PRIORITIES for _ in range(400)]
    await app.enqueue_many(items)

    await Worker(app, concurrency=10, burst=True).run()

    first = order[:300]  # while every level still has work
    seen = "".join(level[0] for level in first)  # shown if it fails: h, d, l per start
    assert first.count("low") >= 300 // 20, seen  # at least a tenth of the reads, with slack
    assert first.count("default") >= 300 // 20, seen
    assert first.count("high") >= 300 // 2, seen


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate_limit": "fast"}, "rate_limit 'fast'"),
        ({"rate_limit": "0/s"}, "positive"),
        ({"rate_limit": 200}, "must be a string"),
        ({"concurrency": 0}, "concurrency must be a positive integer"),
        ({"concurrency": 2.5}, "concurrency must be a positive integer"),
        ({"priority": 42}, "priority must be one of high, default, low"),
        ({"priority": "urgent"}, "priority must be one of"),
    ],
)
def test_bad_limits_and_priorities_are_refused_when_the_task_is_declared(
    app: Spillway, options: dict[str, Any], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):

        @app.task(**options)
        async def task(payload: Any) -> None: ...


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("200/s", 200, 1),
        ("30/m", 30, 60),
        ("1000/h", 1000, 3600),
        ("5/10s", 5, 10),
        (" 7 / min ", 7, 60),
    ],
)
def test_rate_limits_are_read_as_count_per_period(text: str, count: int, period: float) -> None:
    rate = RateLimit.parse(text)
    assert (rate.count, rate.period) == (count, period)
    assert TypeLimits.build(None, text) == TypeLimits(None, rate)


async def test_an_enqueue_names_a_priority_and_a_bad_one_is_refused(app: Spillway) -> None:
    @app.task
    async def job(payload: Any) -> None: ...

    task_id = await app.enqueue(job, {}, priority="high")
    assert (await app.get(task_id)).queue == "default#high"
    with pytest.raises(Exception, match="priority"):
        await app.enqueue(job, {}, priority="urgent")  # type: ignore[arg-type]


def test_limited_lanes_are_their_own(app: Spillway) -> None:
    @app.task(concurrency=5)
    async def limited(payload: Any) -> None: ...

    assert app.lanes() == [
        "default#high", "default", "default#low",
        "default@limited#high", "default@limited", "default@limited#low",
    ]  # fmt: skip


async def test_stats_metrics_and_the_terminal_show_each_limited_types_slots(app: Spillway) -> None:
    @app.task(concurrency=4, rate_limit="30/m")
    async def throttled(payload: Any) -> None: ...

    await app.enqueue_many([(throttled, {}) for _ in range(5)])
    grant = await app.broker.limits.take("throttled", TypeLimits(4, None), 3)

    figures = await app.stats()
    [limit] = figures.limits
    assert (limit.type, limit.concurrency, limit.rate_limit) == ("throttled", 4, "30/60s")
    assert (limit.running, limit.waiting) == (3, 5)
    text = metrics.render(figures).decode()
    assert 'spillway_limit_running{type="throttled"} 3.0' in text
    assert 'spillway_limit_waiting{type="throttled"} 5.0' in text
    assert 'spillway_limit_concurrency{type="throttled"} 4.0' in text
    console = Console(record=True, width=120)
    console.print(views.stats(figures))
    assert "Limits" in console.export_text()
    await app.broker.limits.give("throttled", TypeLimits(4, None), grant.tokens)
    assert (await app.stats()).limits[0].running == 0
