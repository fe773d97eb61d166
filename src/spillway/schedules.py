"""Scheduled tasks: what a schedule is, and which of its ticks are due.

A schedule names a task type, a payload and its ticks: a cron expression read in a time zone
(``"*/5 * * * *"``, 5 fields, or 6 with seconds first) or an interval (``every=300``: ticks at
the multiples of 300 s since the Unix epoch, so every worker agrees on them). Everything here is
pure: `due` takes the last tick seen and the time, and returns the ticks to run now. Running
them once across any number of workers is `spillway.scheduler`'s job (docs/architecture.md#
schedules).

A tick at most `ON_TIME` seconds old is on time and always runs. Older ones were missed (no
worker ran, or Redis was down); the schedule's ``catch_up`` says what happens to them:

* ``"last"`` (the default): the newest missed tick runs once, unless an on-time one runs;
* ``"all"``: every missed tick runs, oldest first (at most `MAX_CATCH_UP`);
* ``"skip"``: missed ticks never run.

A schedule seen for the first time runs only its newest tick, and only if that is on time:
deploying a daily report at 14:00 does not run the one of 03:00.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = ["MAX_CATCH_UP", "ON_TIME", "CatchUp", "Due", "Schedule", "due"]

CatchUp = Literal["last", "all", "skip"]

#: Seconds a tick stays on time: the check runs every second, so a tick older than this was
#: missed, not merely waiting for the next check.
ON_TIME = 10.0
#: The most missed ticks ``catch_up="all"`` runs (the newest ones).
MAX_CATCH_UP = 100

# A schedule's name is part of Redis keys and idempotency keys.
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule of a task type; build it with `Schedule.build` (it checks every field)."""

    name: str
    task: str
    payload: Any
    cron: str | None
    every: float | None
    tz: str
    catch_up: CatchUp

    @classmethod
    def build(
        cls,
        name: str,
        task: str,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        payload: Any = None,
        tz: str = "UTC",
        catch_up: str = "last",
    ) -> Schedule:
        """A checked schedule; a bad value raises ValueError naming it."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"schedule name {name!r}: 1-100 of letters, digits, '_.:-'")
        if (cron is None) == (every is None):
            raise ValueError(f"schedule {name!r}: give a cron expression or every=, not both")
        if catch_up not in get_args(CatchUp):
            raise ValueError(f"schedule {name!r}: catch_up must be one of last, all, skip")
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
            raise ValueError(f"schedule {name!r}: unknown time zone {tz!r}") from exc
        seconds = None
        if every is not None:
            seconds = every.total_seconds() if isinstance(every, timedelta) else every
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise ValueError(f"schedule {name!r}: every must be seconds or a timedelta")
            if not math.isfinite(seconds) or seconds < 1:
                raise ValueError(f"schedule {name!r}: every must be at least 1 second")
            seconds = float(seconds)
        if cron is not None:
            if not isinstance(cron, str):
                raise ValueError(f"schedule {name!r}: the cron expression must be a string")
            try:
                CronSim(cron, datetime.now(zone))
            except (CronSimError, ValueError, IndexError) as exc:
                raise ValueError(f"schedule {name!r}: cron expression {cron!r}: {exc}") from exc
            cron = " ".join(cron.split())
        return cls(name, task, payload, cron, seconds, tz, catch_up)  # type: ignore[arg-type]

    @property
    def spec(self) -> str:
        """How it reads in listings: the cron expression, or ``every 300s``."""
        return self.cron if self.cron is not None else f"every {self.every:g}s"

    def idempotency_key(self, tick: float) -> str:
        """The key its enqueue of `tick` carries: the same tick is one task, whoever enqueues."""
        return f"spillway-cron:{self.name}:{round(tick * 1000)}"

    def ticks_before(self, now: float, after: float | None, limit: int) -> list[float]:
        """Ticks in (`after`, `now`], newest first, at most `limit` of them."""
        out: list[float] = []
        if self.every is not None:
            tick = math.floor(now / self.every) * self.every
            while len(out) < limit and (after is None or tick > after):
                out.append(tick)
                tick -= self.every
            return out
        zone = ZoneInfo(self.tz)
        # Reverse from just past `now`'s second: CronSim's first reverse step is one second.
        start = datetime.fromtimestamp(math.floor(now) + 1, UTC).astimezone(zone)
        for moment in CronSim(self.cron or "", start, reverse=True):
            tick = moment.timestamp()
            if len(out) >= limit or (after is not None and tick <= after):
                break
            out.append(tick)
        return out

    def next_tick(self, now: float) -> float:
        """The first tick after `now`."""
        if self.every is not None:
            return (math.floor(now / self.every) + 1) * self.every
        start = datetime.fromtimestamp(now, UTC).astimezone(ZoneInfo(self.tz))
        return next(CronSim(self.cron or "", start)).timestamp()


@dataclass(frozen=True, slots=True)
class Due:
    """What a check finds: the ticks to run now, oldest first, and the newest tick it passed
    (to be recorded as seen, run or not; None: no tick is past yet)."""

    run: list[float]
    seen: float | None


def due(schedule: Schedule, last: float | None, now: float) -> Due:
    """The ticks of `schedule` to run at `now`, given `last`, the newest tick already seen
    (None: the schedule is new)."""
    past = schedule.ticks_before(now, last, MAX_CATCH_UP + int(ON_TIME) + 1)
    if not past:
        return Due([], last)
    on_time = [t for t in reversed(past) if now - t <= ON_TIME]
    missed = [t for t in past if now - t > ON_TIME]  # newest first
    if last is None:
        run = on_time[-1:]  # a new schedule starts at its newest tick, if that is on time
    elif schedule.catch_up == "skip":
        run = on_time
    elif schedule.catch_up == "all":
        run = list(reversed(missed[:MAX_CATCH_UP])) + on_time
    else:
        run = on_time or missed[:1]
    return Due(run, past[0])
