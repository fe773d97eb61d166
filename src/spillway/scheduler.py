"""`Scheduler`: enqueue each due tick of an application's schedules, once across all workers.

Every worker runs the schedules of its queues (`Worker` calls `check` about once a second),
so a schedule keeps running while any of them lives. Once per tick comes from the enqueue
itself: a tick's task is enqueued with an idempotency key made of the schedule's name and the
tick, so whichever workers enqueue it, and however often, Redis holds one task for it
(``accept.lua`` writes the key and the task in one script). A worker that dies before or after
that script loses nothing and doubles nothing: the next check, its own or another worker's,
enqueues the tick or finds it enqueued. The stored state (`ScheduleOps`) only records which
ticks are behind; which are due is `spillway.schedules.due`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from spillway.errors import BacklogFull, BrokerUnavailable, IdempotencyConflict
from spillway.schedules import Schedule, due

if TYPE_CHECKING:
    from spillway.app import Spillway

__all__ = ["Scheduler"]

log = logging.getLogger("spillway.scheduler")


class Scheduler:
    """Checks `schedules` of `app` against `clock` (seconds since the epoch; a test's own)."""

    def __init__(
        self,
        app: Spillway,
        schedules: Iterable[Schedule],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.schedules = list(schedules)
        self.clock = clock

    async def check(self) -> list[str]:
        """Enqueue every due tick; returns the ids of the tasks they are (new or found).

        A tick refused for now (a full backlog, Redis down) is not recorded as seen, so the
        next check tries it again while it is on time, and the catch-up policy decides after.
        `BrokerUnavailable` from reading the state passes to the caller.
        """
        if not self.schedules:
            return []
        now = self.clock()
        states = await self.app.broker.schedules.states([s.name for s in self.schedules], now)
        ids: list[str] = []
        for schedule in self.schedules:
            state = states.get(schedule.name)
            seen = None if state is None or state.seen_ms is None else state.seen_ms / 1000
            found = due(schedule, seen, now)
            last_run = None if state is None or state.run_ms is None else state.run_ms / 1000
            last_task = None if state is None else state.task
            passed = found.seen
            for tick in found.run:
                task_id = await self._enqueue(schedule, tick)
                if task_id is None:
                    passed = tick - 0.001  # not seen yet: the next check tries it again
                    break
                ids.append(task_id)
                last_run, last_task = tick, task_id
            queue = self.app.resolve(schedule.task).queue
            try:
                await self.app.broker.schedules.record(
                    schedule, queue, seen=passed, run=last_run, task_id=last_task,
                    next_tick=schedule.next_tick(now),
                )  # fmt: skip
            except BrokerUnavailable as exc:
                log.warning("schedule %s: its state was not stored: %s", schedule.name, exc)
        return ids

    async def _enqueue(self, schedule: Schedule, tick: float) -> str | None:
        """The task of `tick` (enqueued now or before); None if refused for now."""
        try:
            return await self.app.enqueue(
                schedule.task, schedule.payload, idempotency_key=schedule.idempotency_key(tick)
            )
        except IdempotencyConflict as exc:
            # Another version of the application enqueued this tick with another payload:
            # the tick has its task, and it is that one.
            log.warning("schedule %s: tick %.0f was enqueued with another payload",
                        schedule.name, tick)  # fmt: skip
            return exc.task_id
        except (BacklogFull, BrokerUnavailable) as exc:
            log.warning("schedule %s: tick %.0f not enqueued yet: %s", schedule.name, tick, exc)
            return None
