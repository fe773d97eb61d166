"""Poisoned schedule states: what workers recorded in `<prefix>:schedules` is read as
untrusted (docs/security.md#poisoned-redis-data). A state that does not decode is a new
schedule to the scheduler and left out of the listing; a key of another type stops no tick."""

from __future__ import annotations

import redis.asyncio as aioredis
from tests.test_schedules import T0, Clock, scheduled_app

from spillway import Settings
from spillway.scheduler import Scheduler


async def test_unreadable_schedule_states_are_left_out_and_read_as_new(
    settings: Settings, redis: aioredis.Redis
) -> None:
    app = scheduled_app(settings)
    try:
        key = app.broker.keys.schedules
        future = '{"seen_ms": 253402300799000, "type": "ping"}'  # 9999: no clock of ours
        bad = ['{"seen_ms": "soon"}', "not json", '{"seen_ms": 1e400}', "[]", "\xff" * 3, future]
        for value in bad:
            await redis.hset(key, mapping={"minutely": value, "other": value})
            [task_id] = await Scheduler(app, app.schedules.values(), Clock(T0 + 1)).check()
            assert [s.name for s in (await app.stats()).schedules] == ["minutely"]  # rewritten
            assert task_id  # a new schedule: the on-time tick runs (once: its key)
    finally:
        await app.close()


async def test_a_schedules_key_of_another_type_stops_no_tick(
    settings: Settings, redis: aioredis.Redis
) -> None:
    app = scheduled_app(settings)
    try:
        await redis.set(app.broker.keys.schedules, "not a hash")
        clock = Clock(T0 + 1)
        scheduler = Scheduler(app, app.schedules.values(), clock)
        [task_id] = await scheduler.check()
        assert await scheduler.check() == [task_id]  # nothing recorded: found again, not doubled
        assert (await app.stats()).schedules == []
        assert (await app.stats()).queues[0].backlog == 1
    finally:
        await app.close()
