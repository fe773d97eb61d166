"""A task's status changes as a stream of events (``GET /tasks/{id}/events``, `Spillway.events`).

Each event is the task's record at one status, with an id that grows along the task's life:
``<attempts>.<step>``, the step 0 queued, 1 running, 2 failed with a retry to come, 3 final.
So ``0.0`` (queued), ``1.1`` (first run), ``1.2`` (it failed, a retry is due), ``2.1``,
``2.3`` (succeeded on the second attempt). A client that reconnects with the last id it saw
(SSE's ``Last-Event-ID``) gets the task's state only if it moved on since, and a stream ends
with the final event: whoever follows a task sees its latest state and its outcome exactly
once, though not a state it held only while the client was away.

Changes arrive on the task's pub/sub channel (`Admin.watch`: the record is marked so the
scripts publish starts and failures too); every wake-up re-reads the record, so a lost
message or connection costs a moment, never an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from spillway.records import TaskRecord, TaskStatus

if TYPE_CHECKING:
    from spillway.app import Spillway

__all__ = ["event_id", "newer", "task_events"]

_STEP = {TaskStatus.QUEUED: 0, TaskStatus.RUNNING: 1, TaskStatus.FAILED: 2}


def event_id(record: TaskRecord) -> str:
    """The id of the event `record` is (see the module's docstring)."""
    return f"{record.attempts}.{_STEP.get(record.status, 3)}"


def _parse(value: str) -> tuple[int, int] | None:
    attempts, dot, step = value.partition(".")
    if not dot or not attempts.isdigit() or not step.isdigit() or len(value) > 24:
        return None
    return int(attempts), int(step)


def newer(candidate: str, last: str | None) -> bool:
    """Whether event `candidate` comes after `last` (None, or an id we did not write: yes)."""
    seen = None if last is None else _parse(last)
    now = _parse(candidate)
    return seen is None or now is None or now > seen


async def task_events(
    app: Spillway,
    task_id: str,
    *,
    owner: str | None = None,
    last_event_id: str | None = None,
    timeout: float = 300.0,
) -> AsyncIterator[tuple[str, TaskRecord]]:
    """(event id, record) at each new status of the task, until its final one or `timeout`
    seconds. `TaskNotFound` (another owner's task too) before the first event."""
    record = await app.get(task_id, owner=owner)  # before subscribing: a 404 costs nothing
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = last_event_id
    async with app.broker.admin.watch(task_id) as changed:
        while True:
            changed.clear()
            record = await app.get(task_id, owner=owner)
            current = event_id(record)
            if newer(current, last):
                last = current
                yield current, record
            if record.terminal:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return
