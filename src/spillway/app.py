"""`Spillway`: declare tasks, enqueue them, and read or wait for their outcome."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, overload

from spillway import metrics
from spillway.broker import AcceptRequest, Broker
from spillway.broker.accept import AcceptWriter
from spillway.errors import (
    BrokerUnavailable,
    OutcomeUnknown,
    RecordUnreadable,
    ResultTimeout,
    SpillwayError,
    TaskFailed,
    TaskNotCancellable,
    TaskNotFound,
    UnknownTaskType,
)
from spillway.records import DeadTask, EnqueueResult, Stats, TaskRecord, TaskStatus, Unreadable
from spillway.retry import RetryPolicy
from spillway.settings import Settings
from spillway.tasks import Handler, TaskDef

__all__ = ["EnqueueItem", "Spillway"]

log = logging.getLogger("spillway.app")

F = TypeVar("F", bound=Handler)
# Tasks per round trip in enqueue_many: chunks are pipelined, Redis writing one while the next
# is prepared (the size is measured in docs/benchmarks.md#enqueue-many-chunks).
_CHUNK = 100
TaskRef = str | TaskDef | Handler


@dataclass(frozen=True, slots=True)
class EnqueueItem:
    """One task for `Spillway.enqueue_many`."""

    type: TaskRef
    payload: Any = None
    idempotency_key: str | None = None
    delay: float | timedelta | None = None
    max_retries: int | None = None
    timeout: float | None = None


class Spillway:
    """A task application: the registry of task types and the client of their queues.

    The same module is imported by the API (to validate and enqueue) and by the workers (to run).
    Nothing connects until first use; `async with app:` (or `await app.close()`) releases Redis.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        metrics.use_fast_path(self.settings.fast_path)  # the process's metrics, as they are
        self.tasks: dict[str, TaskDef] = {}
        self._broker: Broker | None = None

    # --- declaring tasks ---------------------------------------------------------------------

    @overload
    def task(self, fn: F, /) -> F: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        max_retries: int | None = None,
        timeout: float | None = None,
        retry_base: float | None = None,
        retry_cap: float | None = None,
        retry_jitter: bool = True,
    ) -> Callable[[F], F]: ...

    def task(  # type: ignore[misc]  # the positional form and the keyword form never mix
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        max_retries: int | None = None,
        timeout: float | None = None,
        retry_base: float | None = None,
        retry_cap: float | None = None,
        retry_jitter: bool = True,
    ) -> F | Callable[[F], F]:
        """Register a handler; its first parameter's annotation is the payload type.

        ``max_retries`` retries follow the first attempt (so at most ``1 + max_retries`` runs),
        spaced by exponential backoff from ``retry_base`` up to ``retry_cap`` seconds with full
        jitter; ``timeout`` bounds each run. Unset values come from the settings.
        """
        s = self.settings

        def register(handler: F) -> F:
            task_name = name or handler.__name__
            if task_name in self.tasks:
                raise ValueError(f"task type {task_name!r} is already registered")
            if not _valid_name(queue):
                raise ValueError(f"queue name {queue!r}: use letters, digits, '_', '-', '.'")
            self.tasks[task_name] = TaskDef.build(
                handler,
                name=task_name,
                queue=queue,
                policy=RetryPolicy(
                    s.max_retries if max_retries is None else max_retries,
                    s.task_timeout if timeout is None else timeout,
                    s.retry_base if retry_base is None else retry_base,
                    s.retry_cap if retry_cap is None else retry_cap,
                ),
                retry_jitter=retry_jitter,
            )
            return handler

        return register(fn) if fn is not None else register

    @property
    def queues(self) -> list[str]:
        """Every queue a registered task uses."""
        return sorted({t.queue for t in self.tasks.values()}) or ["default"]

    def resolve(self, ref: TaskRef) -> TaskDef:
        """The task definition for a name, a handler or a definition."""
        if isinstance(ref, TaskDef):
            return ref
        if isinstance(ref, str):
            found = self.tasks.get(ref)
        else:
            found = next((t for t in self.tasks.values() if t.fn is ref), None)
        if found is None:
            raise UnknownTaskType(str(getattr(ref, "__name__", ref)), sorted(self.tasks))
        return found

    # --- connection --------------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The application's Redis boundary, made on first use (nothing connects until then)."""
        if self._broker is None:
            self._broker = Broker(self.settings, lambda: self.queues)
        return self._broker

    async def connect(self) -> None:
        """Check the server (version, eviction policy), load scripts and create consumer groups.

        Every write does this on its first use too; calling it first fails at start-up instead.
        """
        await self.broker.ready()

    async def close(self) -> None:
        if self._broker is not None:
            await self._broker.close()
            self._broker = None

    async def __aenter__(self) -> Spillway:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- enqueueing --------------------------------------------------------------------------

    async def enqueue(
        self,
        task_type: TaskRef,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        delay: float | timedelta | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> str:
        """Validate the payload, write the task durably, and return its id.

        With an `idempotency_key`, the same key and the same request return the first task's
        id without enqueueing again; the same key with a different request raises
        `IdempotencyConflict`. A full backlog raises `BacklogFull`; Redis trouble raises
        `BrokerUnavailable`. In both cases nothing was enqueued.
        """
        accepts = self.broker.accepts
        request = accepts.prepare(
            self.resolve(task_type), payload, idempotency_key=idempotency_key, delay=delay,
            max_retries=max_retries, timeout=timeout,
        )  # fmt: skip
        return await accepts.accept(request)

    async def enqueue_many(
        self, items: Iterable[EnqueueItem | tuple[TaskRef, Any]]
    ) -> list[EnqueueResult]:
        """Enqueue many tasks; each item is accepted or refused on its own.

        Items go out in pipelined chunks: while Redis writes one chunk, the next is validated
        and encoded, so Python time and Redis time overlap instead of adding up.
        """
        await self.connect()
        accepts = self.broker.accepts
        results: list[EnqueueResult | None] = []
        chunk: list[tuple[int, AcceptRequest]] = []
        writes: list[asyncio.Task[None]] = []
        for item in items:
            it = item if isinstance(item, EnqueueItem) else EnqueueItem(item[0], item[1])
            try:
                request = accepts.prepare(
                    self.resolve(it.type), it.payload, idempotency_key=it.idempotency_key,
                    delay=it.delay, max_retries=it.max_retries, timeout=it.timeout,
                )  # fmt: skip
            except SpillwayError as exc:
                results.append(EnqueueResult(task_id=None, error=exc))
                continue
            chunk.append((len(results), request))
            results.append(None)
            if len(chunk) == _CHUNK:
                writes.append(asyncio.create_task(_write_chunk(accepts, results, chunk)))
                chunk = []
                await asyncio.sleep(0)  # let the chunk go out before preparing the next
        if chunk:
            writes.append(asyncio.create_task(_write_chunk(accepts, results, chunk)))
        await asyncio.gather(*writes)
        return [r for r in results if r is not None]

    # --- reading -----------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord:
        """The task's status record; `TaskNotFound` for an unknown (or expired) id.

        `RecordUnreadable` if what Redis holds under its key is not a record Spillway wrote.
        """
        raw = await self.broker.admin.get(task_id) if _valid_id(task_id) else None
        if raw is None:
            raise TaskNotFound(task_id)
        try:
            record = TaskRecord.from_hash(raw)
            if record.id != task_id:
                raise Unreadable("id", "names another task")
        except Unreadable as exc:
            log.warning("task %s: its record cannot be read: %s", task_id, exc)
            raise RecordUnreadable(task_id, str(exc)) from None
        return record

    async def wait(self, task_id: str, timeout: float) -> TaskRecord:
        """The record once the task is terminal; `ResultTimeout` after `timeout` seconds.

        Wakes on the completion notice the finish script publishes, not by polling.
        """
        record = await self.get(task_id)
        if record.terminal:
            return record
        if not await self.broker.admin.wait(task_id, timeout):
            raise ResultTimeout(task_id, timeout)
        return await self.get(task_id)

    async def result(self, task_id: str, timeout: float = 60.0) -> Any:
        """The task's result once it succeeded; `TaskFailed` if it ended dead or cancelled."""
        record = await self.wait(task_id, timeout)
        if record.status is not TaskStatus.SUCCEEDED:
            raise TaskFailed(task_id, record.status.value, record.error)
        return record.result

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task that has not started; `TaskNotCancellable` once it runs or ended."""
        if not _valid_id(task_id):
            raise TaskNotFound(task_id)
        outcome, status = await self.broker.admin.cancel(task_id)
        if outcome == "missing":
            raise TaskNotFound(task_id)
        if outcome == "refused":
            raise TaskNotCancellable(task_id, status or "unknown")
        return await self.get(task_id)

    # --- dead letters and figures ------------------------------------------------------------

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadTask]:
        """The newest dead-lettered tasks (all known queues unless `queue` is given)."""
        queues = [queue] if queue else await self._all_queues()
        return await self.broker.admin.dlq_list(queues, limit)

    async def replay(self, task_id: str) -> bool:
        """Run a dead-lettered task again under its id. False if it is not in the dead letters."""
        if not _valid_id(task_id):
            return False
        admin = self.broker.admin
        try:
            raw = await admin.get(task_id)
        except RecordUnreadable:
            raw = None  # its dead letter, if any, is still found through the index
        pointer = raw.get("dead_letter") if raw else None
        if raw and pointer and await admin.dlq_replay_entry(task_id, raw.get("queue", ""), pointer):
            return True
        # Its record has expired (dead letters outlive records): the dead-letter index of each
        # queue knows the entry, so no dead letters are read (the cost is not the DLQ's size).
        return await admin.dlq_replay_id(task_id, await self._all_queues())

    async def replay_all(self, queue: str | None = None, limit: int = 100_000) -> int:
        """Replay every dead letter (of one queue); returns how many were queued again."""
        replayed = 0
        for dead in await self.dead_letters(queue, limit):
            replayed += await self.broker.admin.dlq_replay(dead)
        return replayed

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        queues = [queue] if queue else await self._all_queues()
        return await self.broker.admin.dlq_purge(queues)

    async def stats(self) -> Stats:
        """Backlog, pending, delayed and dead-letter sizes, live workers and per-type counts."""
        queues = await self._all_queues()
        return Stats(
            queues=await self.broker.admin.queue_stats(queues),
            workers=await self.broker.admin.workers(),
            counts=await self.broker.admin.counters(),
        )

    async def _all_queues(self) -> list[str]:
        known = set(await self.broker.admin.known_queues())
        for name in sorted(q for q in known if not _valid_name(q)):
            log.warning("skipping queue %r of the queue set: not a queue name", name[:80])
        return sorted({q for q in known if _valid_name(q)} | set(self.queues))


def _valid_id(task_id: str) -> bool:
    return len(task_id) == 32 and all(c in "0123456789abcdef" for c in task_id)


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "_-." for c in name)


async def _write_chunk(
    accepts: AcceptWriter,
    results: list[EnqueueResult | None],
    chunk: list[tuple[int, AcceptRequest]],
) -> None:
    """One chunk of `enqueue_many` into its slots of `results`: Redis trouble refuses just
    its items, each on its own."""
    try:
        written = await accepts.write([r for _, r in chunk])
    except OutcomeUnknown as exc:  # each names the task it may be
        written = [EnqueueResult(None, error=exc.naming(r.task_id)) for _, r in chunk]
    except BrokerUnavailable as exc:
        written = [EnqueueResult(None, error=exc) for _ in chunk]
    for (i, _), result in zip(chunk, written, strict=True):
        results[i] = result
