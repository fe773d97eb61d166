"""`ScheduleOps`: each schedule's state, in one Redis hash the workers write.

A field per schedule holds JSON: the newest tick seen (run or passed over), the last tick run
and its task, the next tick, and what the schedule is (for `spillway stats` and the dashboard,
which do not load the application). What runs a tick once is not this state but the
idempotency key of its enqueue (`spillway.scheduler`); the state only tells a worker which
ticks it has already passed. It is read back as untrusted input: a field that does not decode
is a new schedule to the scheduler and left out of the listing, never an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.exceptions import ResponseError

from spillway.broker.core import RedisCore
from spillway.records import ScheduleStats, from_ms
from spillway.schedules import Schedule

__all__ = ["ScheduleOps", "ScheduleState"]

log = logging.getLogger("spillway.broker")

_MAX_MS = 253_402_300_799_000  # 9999-12-31: past that datetime cannot show it
_DAY_MS = 86_400_000


class ScheduleState(BaseModel):
    """One schedule's stored state (times in ms since the epoch)."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    type: str
    queue: str
    spec: str
    tz: str
    catch_up: str
    seen_ms: int | None
    run_ms: int | None
    task: str | None
    next_ms: int | None
    at_ms: int

    def stats(self, name: str) -> ScheduleStats:
        return ScheduleStats(
            name=name, type=self.type, queue=self.queue, spec=self.spec, tz=self.tz,
            catch_up=self.catch_up, last_run=_time(self.run_ms), last_task=self.task,
            next_run=_time(self.next_ms), checked_at=_time(self.at_ms),
        )  # fmt: skip


def _time(value: int | None) -> Any:
    return None if value is None else from_ms(str(value))


def _decode(raw: object) -> ScheduleState | None:
    try:
        state = ScheduleState.model_validate_json(raw if isinstance(raw, str | bytes) else "")
    except ValidationError:
        return None
    times = (state.seen_ms, state.run_ms, state.next_ms, state.at_ms)
    if any(t is not None and not 0 <= t <= _MAX_MS for t in times):
        return None
    return state


class ScheduleOps:
    """Read and record schedules' states, over a shared `RedisCore`."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def states(self, names: list[str], now: float) -> dict[str, ScheduleState | None]:
        """The stored state of each schedule (None: new, unreadable, or a tick more than a day
        past `now`, which no clock of ours wrote)."""
        if not names:
            return {}
        raw = await self._read(lambda pipe: pipe.hmget(self.core.keys.schedules, names))
        values = raw if isinstance(raw, list) and len(raw) == len(names) else [None] * len(names)
        out = {name: _decode(value) for name, value in zip(names, values, strict=True)}
        ceiling = now * 1000 + _DAY_MS
        return {
            name: None if state is None or (state.seen_ms or 0) > ceiling else state
            for name, state in out.items()
        }

    async def record(
        self,
        schedule: Schedule,
        queue: str,
        *,
        seen: float | None,
        run: float | None,
        task_id: str | None,
        next_tick: float,
    ) -> bool:
        """Store what a check found; False if a newer tick was stored meanwhile (by another
        worker), which is kept."""
        state = ScheduleState(
            type=schedule.task, queue=queue, spec=schedule.spec, tz=schedule.tz,
            catch_up=schedule.catch_up, seen_ms=_ms(seen), run_ms=_ms(run), task=task_id,
            next_ms=_ms(next_tick), at_ms=int(time.time() * 1000),
        )  # fmt: skip
        # A stored tick more than a day past this clock is not believed (nor kept).
        args = [schedule.name, _ms(seen) or 0, state.model_dump_json(), state.at_ms + _DAY_MS]
        try:
            written = await self.core.script("schedule", [self.core.keys.schedules], args)
        except ResponseError as exc:  # the key holds another type: the ticks run regardless
            log.warning("schedule %s: state not stored in %s: %s", schedule.name,
                        self.core.keys.schedules, exc)  # fmt: skip
            return False
        return bool(written)

    async def listing(self) -> list[ScheduleStats]:
        """Every recorded schedule, by name; unreadable fields are logged and left out."""
        raw = await self._read(lambda pipe: pipe.hgetall(self.core.keys.schedules))
        if not isinstance(raw, dict):
            log.warning("skipping schedules %s: the key holds another type",
                        self.core.keys.schedules)  # fmt: skip
            return []
        out = []
        for name, value in sorted(raw.items(), key=lambda kv: str(kv[0])):
            state = _decode(value)
            if state is None:
                log.warning("skipping schedule %r of %s: unreadable", str(name)[:80],
                            self.core.keys.schedules)  # fmt: skip
                continue
            out.append(state.stats(str(name)))
        return out

    async def _read(self, command: Callable[[Any], object]) -> object:
        """One command's reply, or its error as a value (a key of another type is data)."""

        async def read() -> object:
            async with self.core.client.pipeline(transaction=False) as pipe:
                command(pipe)
                replies: list[object] = await pipe.execute(raise_on_error=False)
            return replies[0]

        return await self.core.run(read)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)
