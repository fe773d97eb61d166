"""Scheduled tasks: which ticks are due (a controllable clock, no waiting), once per tick across
workers (concurrent schedulers, and two worker processes against one Redis), the listing, and
bad schedules refused at decoration time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel
from tests.procs import output, spawn_worker, stop
from tests.test_worker_processes import wait_until

from spillway import Settings, Spillway, TaskStatus, Worker
from spillway.errors import PayloadInvalid
from spillway.scheduler import Scheduler
from spillway.schedules import MAX_CATCH_UP, ON_TIME, Schedule, due

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp()  # a Monday, on the minute


def at(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


# --- which ticks are due -------------------------------------------------------------------------


def test_an_interval_ticks_at_its_multiples_and_a_tick_runs_while_on_time() -> None:
    s = Schedule.build("s", "t", every=300)
    assert due(s, None, T0 + 3).run == [T0]  # a new schedule runs the tick it is on time for
    assert due(s, None, T0 + ON_TIME + 1).run == []  # ...but never an older one
    assert due(s, T0, T0 + 299).run == []  # seen already
    found = due(s, T0, T0 + 301)
    assert (found.run, found.seen) == ([T0 + 300], T0 + 300)


def test_a_cron_expression_is_read_in_its_time_zone_across_a_dst_change() -> None:
    s = Schedule.build("s", "t", cron="0 3 * * *", tz="Europe/Paris")
    # 2026-03-29: Paris moves from UTC+1 to UTC+2; 03:00 local is 01:00 UTC that day.
    before = at("2026-03-28 03:00", "Europe/Paris")
    after = at("2026-03-29 03:00", "Europe/Paris")
    assert datetime.fromtimestamp(after, UTC).hour == 1
    assert due(s, before, after + 1).run == [after]
    assert s.next_tick(before) == after
    assert s.ticks_before(after + 1, None, 2) == [after, before]


def test_missed_ticks_follow_the_catch_up_policy() -> None:
    last, now = T0, T0 + 3600 + 30  # an hour down; the newest tick is 30 s old
    missed = [T0 + 60 * k for k in range(1, 61)]
    policies = {
        "last": [missed[-1]],  # the newest missed tick, once
        "all": missed,  # every one, oldest first
        "skip": [],
    }
    for policy, expected in policies.items():
        s = Schedule.build("s", "t", cron="* * * * *", catch_up=policy)
        found = due(s, last, now)
        assert found.run == expected, policy
        assert found.seen == missed[-1]  # passed over or run, every one is behind now


def test_catch_up_all_is_bounded_and_an_on_time_tick_makes_last_run_only_that() -> None:
    s = Schedule.build("s", "t", every=1, catch_up="all")
    run = due(s, T0, T0 + 100_000).run
    assert len(run) == MAX_CATCH_UP + ON_TIME + 1
    assert run == sorted(run)
    s = Schedule.build("s", "t", every=1)  # last
    assert due(s, T0, T0 + 5).run == [T0 + k for k in range(1, 6)]  # all on time: every one


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "*/5 * * *"}, "cron expression"),
        ({"cron": "61 * * * *"}, "cron expression"),
        ({"cron": "* * * * *", "every": 5}, "not both"),
        ({}, "not both"),
        ({"every": 0.5}, "at least 1 second"),
        ({"every": float("inf")}, "at least 1 second"),
        ({"every": "5"}, "seconds or a timedelta"),
        ({"every": 60, "tz": "Mars/Olympus"}, "time zone"),
        ({"every": 60, "catch_up": "some"}, "catch_up"),
        ({"every": 60, "name": "a b"}, "schedule name"),
    ],
)
def test_bad_schedules_are_refused_at_decoration_time(
    app: Spillway, options: dict[str, Any], message: str
) -> None:
    cron = options.pop("cron", None)
    with pytest.raises(ValueError, match=message):

        @app.cron(cron, **options)
        async def job(payload: Any) -> None: ...

    assert app.schedules == {}
    assert "job" not in app.tasks  # nothing half-registered


class Report(BaseModel):
    region: str


def test_a_payload_the_task_would_refuse_is_refused_at_decoration_time(app: Spillway) -> None:
    with pytest.raises(PayloadInvalid):

        @app.cron("0 * * * *", payload={"area": "eu"})
        async def report(payload: Report) -> None: ...

    assert "report" not in app.tasks


def test_one_task_can_have_several_named_schedules(app: Spillway) -> None:
    @app.cron("0 6 * * *", payload={"region": "eu"}, name="report-eu", tz="Europe/Paris")
    @app.cron("0 6 * * *", payload={"region": "us"}, name="report-us", tz="America/New_York")
    @app.task(queue="reports")
    async def report(payload: Report) -> None: ...

    assert set(app.schedules) == {"report-eu", "report-us"}
    assert {s.task for s in app.schedules.values()} == {"report"}
    with pytest.raises(ValueError, match="exists"):
        app.cron(every=60, payload={"region": "x"}, name="report-eu")(report)


# --- once per tick, against Redis ----------------------------------------------------------------


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scheduled_app(settings: Settings, **options: Any) -> Spillway:
    app = Spillway(settings)

    @app.cron(every=60, name="minutely", **options)
    async def ping(payload: Any) -> None: ...

    return app


async def test_eight_schedulers_at_one_tick_enqueue_one_task(settings: Settings) -> None:
    apps = [scheduled_app(settings) for _ in range(8)]  # eight workers' connections
    clock = Clock(T0 + 1)
    try:
        schedulers = [Scheduler(a, a.schedules.values(), clock) for a in apps]
        found = await asyncio.gather(*(s.check() for s in schedulers))
        ids = {i for got in found for i in got}
        assert len(ids) == 1  # all eight name the same task
        clock.now += 60
        found = await asyncio.gather(*(s.check() for s in schedulers))
        assert len({i for got in found for i in got} - ids) == 1
        assert (await apps[0].stats()).queues[0].backlog == 2
    finally:
        for a in apps:
            await a.close()


async def test_a_worker_that_died_after_enqueueing_a_tick_leaves_it_once(
    settings: Settings,
) -> None:
    app = scheduled_app(settings)
    try:
        schedule = app.schedules["minutely"]
        # The dead worker's enqueue went through; its record of the tick did not.
        first = await app.enqueue("ping", None, idempotency_key=schedule.idempotency_key(T0))
        assert await Scheduler(app, [schedule], Clock(T0 + 2)).check() == [first]
        assert (await app.stats()).queues[0].backlog == 1
        assert await Scheduler(app, [schedule], Clock(T0 + 3)).check() == []  # seen now
    finally:
        await app.close()


async def test_a_tick_refused_by_a_full_backlog_runs_at_a_later_check(settings: Settings) -> None:
    app = scheduled_app(settings.model_copy(update={"backlog_limit": 1, "shards": 1}))
    try:
        blocker = await app.enqueue("ping", None)
        clock = Clock(T0 + 1)
        scheduler = Scheduler(app, app.schedules.values(), clock)
        assert await scheduler.check() == []  # refused: not seen, so tried again
        assert await app.cancel(blocker)
        clock.now += 2
        assert len(await scheduler.check()) == 1
    finally:
        await app.close()


async def test_an_older_state_never_replaces_a_newer_one(settings: Settings) -> None:
    app = scheduled_app(settings)
    try:
        fast = Scheduler(app, app.schedules.values(), Clock(T0 + 61))
        slow = Scheduler(app, app.schedules.values(), Clock(T0 + 1))
        await fast.check()
        await slow.check()  # a worker late by a minute records its older tick
        state = (await app.broker.schedules.states(["minutely"], T0))["minutely"]
        assert state is not None
        assert state.seen_ms == (T0 + 60) * 1000
    finally:
        await app.close()


async def test_schedules_are_listed_with_their_last_and_next_run(settings: Settings) -> None:
    app = scheduled_app(settings, payload={"n": 1})
    try:
        [task_id] = await Scheduler(app, app.schedules.values(), Clock(T0 + 1)).check()
        [listed] = (await app.stats()).schedules
        assert (listed.name, listed.type, listed.spec, listed.queue) == (
            "minutely", "ping", "every 60s", "default",
        )  # fmt: skip
        assert listed.last_task == task_id
        assert listed.last_run == datetime.fromtimestamp(T0, UTC)
        assert listed.next_run == datetime.fromtimestamp(T0 + 60, UTC)
        assert (await app.get(task_id)).status is TaskStatus.QUEUED
    finally:
        await app.close()


async def test_a_failing_schedule_check_never_stops_the_workers_upkeep(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = Spillway(settings)
    ran = asyncio.Event()

    @app.cron(every=1, name="each-second")
    async def tick(payload: Any) -> None:
        ran.set()

    worker = Worker(app, concurrency=2)
    real, calls = worker._scheduler.check, 0

    async def broken_once() -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in a schedule")
        return await real()

    worker._scheduler.check = broken_once  # type: ignore[method-assign]
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(ran.wait(), 10)  # the keeper lived on: the next check ran it
    finally:
        worker.stop()
        await running
        await app.close()
    assert "checking the schedules failed" in caplog.text
    assert calls >= 2


# --- worker processes ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_two_worker_processes_run_each_second_tick_once(
    app: Spillway, worker_env: dict[str, str], redis: aioredis.Redis
) -> None:
    runs = f"{app.settings.prefix}:test:runs"
    workers = [spawn_worker(worker_env, app="tests.apps.scheduled:app") for _ in range(2)]
    try:
        # Four ticks ran (a tick a second); both workers checked every one of them.
        await wait_until(
            lambda: _at_least(redis, runs, 4),
            describe=lambda: "\n".join(output(w)[-2000:] for w in workers),
        )
    finally:
        for w in workers:
            stop(w)
    counts = {str(k): int(v) for k, v in (await redis.hgetall(runs)).items()}
    assert set(counts.values()) == {1}, counts  # each task ran once
    [listed] = (await app.stats()).schedules
    assert listed.name == "each-second"
    assert listed.last_task in counts
    # One task per tick: as many tasks as ticks went by while the workers ran, not twice that.
    assert listed.last_run is not None
    created = [(await app.get(i)).created_at for i in counts]
    first = min(c for c in created if c is not None)
    span = (listed.last_run - first).total_seconds()
    assert len(counts) <= span + 3, (len(counts), span)


async def _at_least(redis: aioredis.Redis, key: str, n: int) -> bool:
    return int(await redis.hlen(key)) >= n


def test_a_new_schedule_of_a_daily_report_does_not_run_todays_past_tick() -> None:
    s = Schedule.build("daily", "t", cron="0 3 * * *")
    now = at("2026-03-02 14:00")
    assert due(s, None, now).run == []
    assert due(s, None, now).seen == at("2026-03-02 03:00")
    assert s.next_tick(now) == at("2026-03-03 03:00")
    assert Schedule.build("d", "t", every=timedelta(days=1)).every == 86400
