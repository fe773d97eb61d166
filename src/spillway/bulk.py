"""Bulk cancel: which waiting tasks a filter selects, and one bounded page of cancelling them.

A filter names a queue, a task type, a priority and/or a minimum age; the lanes it reads
follow from the queue and priority (`spillway.lanes`), the type and age are checked on each
task's record. A page reads at most `limit` entries (`spillway.broker.sweep`) and cancels each
match through `Admin.cancel`, the operation ``DELETE /tasks/{id}`` uses, so a bulk cancel is
many single cancels, each atomic and each safe to repeat. Only waiting tasks are cancelled:
``queued`` (in a stream, delayed in a due set, or delivered but not begun) and ``failed``
(waiting for a retry). A running task, or one that ended meanwhile, is skipped; one that
starts between the sweep's read and its cancel gets what ``DELETE`` gives a running task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from spillway.broker import Broker
from spillway.broker.sweep import Waiting
from spillway.errors import FilterInvalid, RecordUnreadable
from spillway.lanes import Priority, parse_lane

__all__ = ["CANCELLABLE", "MAX_PAGE", "CancelFilter", "CancelPage", "cancel_page"]

#: The statuses a bulk cancel cancels (what ``cancel.lua`` calls waiting).
CANCELLABLE = frozenset({"queued", "failed"})
#: The most entries one page reads (and so the most tasks it cancels).
MAX_PAGE = 1000
# Cancels in flight at once within a page: each is two short round trips.
_CONCURRENT = 32


@dataclass(frozen=True, slots=True)
class CancelFilter:
    """Which waiting tasks to cancel; every criterion given must hold, and one must be given."""

    queue: str | None = None
    type: str | None = None
    priority: Priority | None = None
    older_than_s: float | None = None

    def __post_init__(self) -> None:
        if (
            self.queue is None
            and self.type is None
            and self.priority is None
            and (self.older_than_s is None)
        ):
            raise FilterInvalid("give at least one of queue, type, priority, older_than_s")
        if self.older_than_s is not None and not 0 <= self.older_than_s <= 10**9:
            raise FilterInvalid("older_than_s must be from 0 to 10^9 seconds")

    def lanes(self, known: Iterable[str]) -> list[str]:
        """The lanes among `known` that can hold a task this filter selects."""
        out = []
        for name in known:
            lane = parse_lane(name)
            if self.queue is not None and lane.queue != self.queue:
                continue
            if self.priority is not None and lane.priority != self.priority:
                continue
            if self.type is not None and lane.limited_type not in (None, self.type):
                continue  # another limited type's lane holds only that type's tasks
            out.append(name)
        return sorted(out)

    def selects(self, task: Waiting, now_ms: int) -> bool:
        """Whether a task found in one of `lanes` is to be cancelled."""
        if task.status not in CANCELLABLE:
            return False
        if self.type is not None and task.type != self.type:
            return False
        if self.older_than_s is not None:
            return task.created_ms is not None and (
                task.created_ms <= now_ms - self.older_than_s * 1000
            )
        return True


@dataclass(frozen=True, slots=True)
class CancelPage:
    """What one page did: entries read, tasks that matched, tasks cancelled (0 in a dry run;
    fewer than matched when some ended in between), and where the next page starts (None:
    done)."""

    examined: int
    matched: int
    cancelled: int
    cursor: str | None
    dry_run: bool

    @property
    def more(self) -> bool:
        return self.cursor is not None


async def cancel_page(
    broker: Broker,
    match: CancelFilter,
    lanes: list[str],
    *,
    cursor: str | None = None,
    limit: int = 500,
    dry_run: bool = False,
) -> CancelPage:
    """Read one page of `lanes` after `cursor` and cancel (or, `dry_run`, count) the tasks
    `match` selects."""
    if not 1 <= limit <= MAX_PAGE:
        raise FilterInvalid(f"limit must be from 1 to {MAX_PAGE}")
    try:
        page = await broker.sweep.page(lanes, cursor, limit)
    except ValueError as exc:
        raise FilterInvalid(str(exc)) from None
    chosen = [t.task_id for t in page.found if match.selects(t, page.now_ms)]
    cancelled = 0
    if not dry_run:
        gate = asyncio.Semaphore(_CONCURRENT)

        async def cancel(task_id: str) -> bool:
            async with gate:
                try:
                    outcome, _ = await broker.admin.cancel(task_id)
                except RecordUnreadable:  # replaced since it was read: not ours to cancel
                    return False
                # 'requested': it started since the sweep read it, and its worker is asked to
                # stop it, as DELETE would (once per-task cancel stops running tasks).
                return outcome in ("cancelled", "requested")

        cancelled = sum(await asyncio.gather(*(cancel(t) for t in chosen)))
    return CancelPage(page.examined, len(chosen), cancelled, page.cursor, dry_run)
