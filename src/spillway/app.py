"""`Spillway`: declare tasks, enqueue them, and read or wait for their outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, overload

from spillway import metrics
from spillway.broker import AcceptRequest, Broker
from spillway.broker.accept import AcceptWriter
from spillway.bulk import CancelFilter, CancelPage, cancel_page
from spillway.errors import (
    BrokerUnavailable,
    OutcomeUnknown,
    RecordUnreadable,
    ResultTimeout,
    SpillwayError,
    TaskFailed,
    TaskNotCancellable,
    TaskNotFound,
    UnknownQueue,
    UnknownTaskType,
)
from spillway.events import task_events
from spillway.expiry import expiry_seconds
from spillway.feed import FeedHub, follow
from spillway.lanes import PRIORITIES, Priority, lanes_of, parse_lane, valid_lane
from spillway.limits import TypeLimits
from spillway.records import (
    DeadTask,
    EnqueueResult,
    LimitStats,
    QueueEvent,
    Stats,
    TaskRecord,
    TaskStatus,
    Unreadable,
)
from spillway.retry import ExceptionTypes, RetryPolicy, exception_classes
from spillway.schedules import Schedule
from spillway.settings import Settings
from spillway.tasks import Handler, TaskDef
from spillway.tracing import Tracing
from spillway.webhooks import check_url

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
    priority: Priority | None = None
    expires: float | timedelta | None = None
    caller: str = ""
    callback_url: str | None = None


class Spillway:
    """A task application: the registry of task types and the client of their queues.

    The same module is imported by the API (to validate and enqueue) and by the workers (to run).
    Nothing connects until first use; `async with app:` (or `await app.close()`) releases Redis.
    """

    def __init__(self, settings: Settings | None = None, *, tracer_provider: Any = None) -> None:
        self.settings = settings if settings is not None else Settings()
        #: OpenTelemetry spans, on once a tracer provider is configured (`spillway.tracing`);
        #: `tracer_provider` is used in place of the global one.
        self.tracing = Tracing(tracer_provider)
        metrics.use_fast_path(self.settings.fast_path)  # the process's metrics, as they are
        self.tasks: dict[str, TaskDef] = {}
        #: Schedules by name (`cron`); the workers of their tasks' queues run them.
        self.schedules: dict[str, Schedule] = {}
        self._broker: Broker | None = None
        self._feed: FeedHub | None = None

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
        concurrency: int | None = None,
        rate_limit: str | None = None,
        priority: Priority = "default",
        expires: float | timedelta | None = None,
        retry_on: ExceptionTypes = (Exception,),
        no_retry_for: ExceptionTypes = (),
        callback_url: str | None = None,
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
        concurrency: int | None = None,
        rate_limit: str | None = None,
        priority: Priority = "default",
        expires: float | timedelta | None = None,
        retry_on: ExceptionTypes = (Exception,),
        no_retry_for: ExceptionTypes = (),
        callback_url: str | None = None,
    ) -> F | Callable[[F], F]:
        """Register a handler; its first parameter's annotation is the payload type.

        ``max_retries`` retries follow the first attempt (so at most ``1 + max_retries`` runs),
        spaced by exponential backoff from ``retry_base`` up to ``retry_cap`` seconds with full
        jitter; ``timeout`` bounds each run. Unset values come from the settings.

        ``concurrency`` bounds how many tasks of this type run at once and ``rate_limit``
        (``"200/s"``, ``"30/m"``, ``"1000/h"``) how often one may start, across every worker
        (docs/limits.md); ``priority`` (``"high"``, ``"default"``, ``"low"``) is its tasks'
        priority unless an enqueue names another. ``expires`` (seconds or a timedelta) is the
        default expiry of its tasks: one not started that long after it was accepted ends
        ``expired``, unrun.

        A failure is retried if it is an instance of ``retry_on`` and not of ``no_retry_for``
        (checked first); any other goes to the dead letters at once. A run's timeout is a
        `TimeoutError` to these rules. A handler's `Retry` is always retried (after its own
        delay) and its `Fail` always dead-lettered. ``callback_url`` is the default completion
        webhook of its tasks (docs/webhooks.md). Bad values raise here, at decoration time.
        """
        s = self.settings
        limits = TypeLimits.build(concurrency, rate_limit)
        _check_priority(priority)
        expires_s = expiry_seconds(expires)
        retry_classes = exception_classes("retry_on", retry_on)
        no_retry_classes = exception_classes("no_retry_for", no_retry_for)
        if callback_url is not None:
            try:
                check_url(callback_url, s.callback_networks)
            except ValueError as exc:
                raise ValueError(f"callback_url {callback_url!r}: {exc}") from None

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
                priority=priority,
                limits=limits,
                expires=expires_s,
                retry_on=retry_classes,
                no_retry_for=no_retry_classes,
                callback_url=callback_url,
            )
            return handler

        return register(fn) if fn is not None else register

    def cron(
        self,
        cron: str | None = None,
        /,
        *,
        every: float | timedelta | None = None,
        payload: Any = None,
        name: str | None = None,
        tz: str = "UTC",
        catch_up: str = "last",
        **task_options: Any,
    ) -> Callable[[F], F]:
        """Run a task on a schedule: ``@app.cron("*/5 * * * *", payload=...)`` or
        ``@app.cron(every=300)``, once per tick across every worker (docs/operations.md#
        scheduled-tasks).

        A cron expression has 5 fields (or 6, seconds first) and is read in `tz` (an IANA
        name); ``every`` (seconds or a timedelta) ticks at its multiples since the epoch.
        `catch_up` says what happens to ticks missed while no worker ran: ``"last"`` (the
        newest runs once), ``"all"`` or ``"skip"`` (`spillway.schedules`). The handler is
        registered as a task with `task_options` (those of `task`) unless it is one already
        (``@app.cron`` above ``@app.task``, or twice with different names). `name` (default:
        the task's) identifies the schedule. Bad values raise here, at decoration time.
        """

        def register(handler: F) -> F:
            found = next((t for t in self.tasks.values() if t.fn is handler), None)
            if found is not None and task_options:
                raise ValueError(f"task {found.name!r} is registered already: give its options"
                                 " to @app.task only")  # fmt: skip
            task_name = found.name if found else task_options.get("name") or handler.__name__
            schedule = Schedule.build(
                name or task_name, task_name, cron=cron, every=every, payload=payload, tz=tz,
                catch_up=catch_up,
            )  # fmt: skip
            if schedule.name in self.schedules:
                raise ValueError(f"schedule {schedule.name!r} exists: give this one a name=")
            task = found or self.resolve(self.task(**task_options)(handler))
            try:
                task.validate(payload)
            except SpillwayError:
                if found is None:
                    del self.tasks[task.name]
                raise
            self.schedules[schedule.name] = schedule
            return handler

        return register

    @property
    def queues(self) -> list[str]:
        """Every queue a registered task uses."""
        return sorted({t.queue for t in self.tasks.values()}) or ["default"]

    def lanes(self, queues: Sequence[str] | None = None) -> list[str]:
        """Every lane (stream) of these queues (default: all), each queue's priorities and
        the lanes of its limited types (`spillway.lanes`)."""
        out: list[str] = []
        for queue in queues if queues is not None else self.queues:
            out += lanes_of(queue)
            limited = sorted(t.name for t in self.tasks.values() if t.queue == queue and t.limits)
            for name in limited:
                out += lanes_of(queue, name)
        return out

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
            self._broker = Broker(self.settings, self.lanes)
            self.tracing.start(self.settings.tracing)  # a provider configured by now counts
        return self._broker

    async def connect(self) -> None:
        """Check the server (version, eviction policy), load scripts and create consumer groups.

        Every write does this on its first use too; calling it first fails at start-up instead.
        """
        await self.broker.ready()

    async def close(self) -> None:
        if self._feed is not None:
            await self._feed.stop()
            self._feed = None
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
        priority: Priority | None = None,
        expires: float | timedelta | None = None,
        caller: str = "",
        callback_url: str | None = None,
    ) -> str:
        """Validate the payload, write the task durably, and return its id.

        With an `idempotency_key`, the same key and the same request return the first task's
        id without enqueueing again; the same key with a different request raises
        `IdempotencyConflict`. A full backlog raises `BacklogFull`; Redis trouble raises
        `BrokerUnavailable` after one more try (a refusal that proves nothing was written, such
        as a stall that made Redis run the write past its deadline, is safe to send again). In
        both cases nothing was enqueued. `expires` (seconds from now, or
        a timedelta) replaces the task type's default expiry: a task not started by then ends
        ``expired``, unrun; it must be longer than `delay`. `caller` names whose turn the task
        waits for and whose quota it counts against when SPILLWAY_FAIR_CALLERS or
        SPILLWAY_CALLER_QUOTA is set (`CallerQuotaFull` at the quota). `callback_url` replaces
        the task type's completion webhook (docs/webhooks.md).
        """
        accepts = self.broker.accepts
        request = accepts.prepare(
            self.resolve(task_type), payload, idempotency_key=idempotency_key, delay=delay,
            max_retries=max_retries, timeout=timeout, priority=priority, expires=expires,
            caller=caller, callback_url=callback_url,
        )  # fmt: skip
        if self.tracing.enabled:
            return await self.tracing.enqueue(request, self._accept)
        return await self._accept(request)

    async def _accept(self, request: AcceptRequest) -> str:
        accepts = self.broker.accepts
        try:
            return await accepts.accept(request)
        except OutcomeUnknown:
            raise  # it may be written: sending it again could enqueue it twice
        except BrokerUnavailable:
            return await accepts.accept(request)  # nothing was written; a fresh budget

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
                    priority=it.priority, expires=it.expires, caller=it.caller,
                    callback_url=it.callback_url,
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

    async def get(self, task_id: str, *, owner: str | None = None) -> TaskRecord:
        """The task's status record; `TaskNotFound` for an unknown (or expired) id.

        `RecordUnreadable` if what Redis holds under its key is not a record Spillway wrote.
        With an `owner` (an API client's scope), another owner's task is `TaskNotFound` too:
        a client learns nothing of tasks it did not submit, not even that they exist.
        """
        raw = await self.broker.admin.get(task_id) if _valid_id(task_id) else None
        if raw is None or (owner is not None and raw.get("owner", "") != owner):
            raise TaskNotFound(task_id)
        try:
            record = TaskRecord.from_hash(raw)
            if record.id != task_id:
                raise Unreadable("id", "names another task")
        except Unreadable as exc:
            log.warning("task %s: its record cannot be read: %s", task_id, exc)
            raise RecordUnreadable(task_id, str(exc)) from None
        return record

    async def wait(self, task_id: str, timeout: float, *, owner: str | None = None) -> TaskRecord:
        """The record once the task is terminal; `ResultTimeout` after `timeout` seconds.

        Wakes on the completion notice the finish script publishes, not by polling. `owner`
        as for `get`.
        """
        if self.tracing.enabled:
            traced: TaskRecord = await self.tracing.wait(
                task_id, self._wait(task_id, timeout, owner)
            )
            return traced
        return await self._wait(task_id, timeout, owner)

    async def _wait(self, task_id: str, timeout: float, owner: str | None) -> TaskRecord:
        record = await self.get(task_id, owner=owner)
        if record.terminal:
            return record
        if not await self.broker.admin.wait(task_id, timeout):
            raise ResultTimeout(task_id, timeout)
        return await self.get(task_id, owner=owner)

    def events(
        self,
        task_id: str,
        *,
        owner: str | None = None,
        last_event_id: str | None = None,
        timeout: float = 300.0,
    ) -> AsyncIterator[tuple[str, TaskRecord]]:
        """(event id, record) at each new status of the task until its final one, or until
        `timeout` seconds; after `last_event_id`, only what came since (`spillway.events`).
        `owner` as for `get`."""
        return task_events(self, task_id, owner=owner, last_event_id=last_event_id, timeout=timeout)

    async def queue_events(
        self,
        queue: str,
        *,
        statuses: Collection[TaskStatus] | None = None,
        types: Collection[str] | None = None,
        last_event_id: str | None = None,
        timeout: float = 300.0,
    ) -> AsyncGenerator[QueueEvent, None]:
        """Each status change of `queue`'s tasks (only `statuses` and `types`, if given) for
        `timeout` seconds, from now or after `last_event_id` (`spillway.feed`). The process's
        followers share one read of each shard. `UnknownQueue`, or `BrokerUnavailable` if
        Redis is away, before the first event."""
        await self.check_queue(queue)
        events = follow(
            self.feed, queue, statuses=statuses, types=types, last_event_id=last_event_id,
            timeout=timeout,
        )  # fmt: skip
        async with contextlib.aclosing(events):  # the hub counts this follower out at once
            async for event in events:
                yield event

    @property
    def feed(self) -> FeedHub:
        """The process's reader of the feeds, shared by every `queue_events` follower."""
        if self._feed is None:
            self._feed = FeedHub(
                self.broker.feed, self.settings.shards, block_ms=self.settings.block_ms
            )
        return self._feed

    async def result(self, task_id: str, timeout: float = 60.0) -> Any:
        """The task's result once it succeeded; else `TaskFailed` (dead, cancelled or expired)."""
        record = await self.wait(task_id, timeout)
        if record.status is not TaskStatus.SUCCEEDED:
            raise TaskFailed(task_id, record.status.value, record.error)
        return record.result

    async def cancel(self, task_id: str, *, owner: str | None = None) -> TaskRecord:
        """Cancel a task; its record after the request.

        A task that has not started (queued, delayed, waiting for a retry) is `cancelled` at
        once. A running one is still `running`, with `cancel_requested` set: its worker stops
        it (an async handler is cancelled, a sync one sees `TaskContext.cancelled`) and it ends
        `cancelled` whatever the run's outcome (`wait` for it). `TaskNotCancellable` once the
        task ended. `owner` as for `get` (checked in the same script that cancels).
        """
        if not _valid_id(task_id):
            raise TaskNotFound(task_id)
        outcome, status = await self.broker.admin.cancel(task_id, owner)
        if outcome == "missing":
            raise TaskNotFound(task_id)
        if outcome == "refused":
            raise TaskNotCancellable(task_id, status or "unknown")
        return await self.get(task_id, owner=owner)

    # --- operating: pause, resume, bulk cancel ------------------------------------------------

    async def pause(self, queue: str) -> bool:
        """Stop workers starting tasks of `queue` (accepts go on); False if it was paused.

        Workers notice within one due-task check and one read (docs/operations.md); running
        tasks finish. `UnknownQueue` for a queue no task uses.
        """
        await self.check_queue(queue)
        return await self.broker.pauses.pause(queue)

    async def resume(self, queue: str) -> bool:
        """Let workers start tasks of `queue` again; False if it was not paused."""
        if queue not in await self.broker.pauses.paused():
            await self.check_queue(queue)
        return await self.broker.pauses.resume(queue)

    async def paused(self) -> list[str]:
        """The paused queues."""
        return sorted(await self.broker.pauses.paused())

    async def cancel_matching(
        self,
        match: CancelFilter,
        *,
        cursor: str | None = None,
        limit: int = 500,
        dry_run: bool = False,
    ) -> CancelPage:
        """Cancel one page of the waiting tasks `match` selects (at most `limit` entries read);
        repeat with the page's `cursor` while it has `more`. `dry_run` counts, cancels nothing.

        Each task is cancelled as `cancel` does it (`spillway.bulk`). `UnknownQueue` or
        `UnknownTaskType` for a filter naming what no task uses, `FilterInvalid` for a bad
        cursor or limit; nothing is cancelled then.
        """
        if match.queue is not None:
            await self.check_queue(match.queue)
        if match.type is not None and self.tasks and match.type not in self.tasks:
            raise UnknownTaskType(match.type, sorted(self.tasks))
        lanes = match.lanes(await self._all_queues())
        return await cancel_page(
            self.broker, match, lanes, cursor=cursor, limit=limit, dry_run=dry_run
        )

    async def check_queue(self, queue: str) -> None:
        """`UnknownQueue` unless some task has used `queue`."""
        known = sorted({parse_lane(lane).queue for lane in await self._all_queues()})
        if queue not in known:
            raise UnknownQueue(queue, known)

    # --- dead letters and figures ------------------------------------------------------------

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadTask]:
        """The newest dead-lettered tasks (all known queues unless `queue` is given)."""
        return await self.broker.admin.dlq_list(await self._lanes(queue), limit)

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
        return await self.broker.admin.dlq_purge(await self._lanes(queue))

    async def stats(self) -> Stats:
        """Backlog, pending, delayed and dead-letter sizes, live workers and per-type counts."""
        lanes = await self._all_queues()
        figures = await self.broker.admin.queue_stats(lanes)
        limits = []
        for task in sorted(self.tasks.values(), key=lambda t: t.name):
            if task.limits is None:
                continue
            mine = set(lanes_of(task.queue, task.name))
            limits.append(
                LimitStats(
                    type=task.name,
                    concurrency=task.limits.concurrency,
                    rate_limit=str(task.limits.rate) if task.limits.rate else None,
                    running=await self.broker.limits.held(task.name),
                    waiting=sum(q.backlog - q.pending for q in figures if q.queue in mine),
                )
            )
        return Stats(
            # A queue's other lanes (priorities, limited types) show once they hold anything.
            queues=[
                q
                for q in figures
                if q.queue == parse_lane(q.queue).queue or q.backlog or q.delayed or q.dead
            ],
            workers=await self.broker.admin.workers(),
            counts=await self.broker.admin.counters(),
            limits=limits,
            paused=await self.paused(),
            schedules=await self.broker.schedules.listing(),
            callbacks=await self.broker.callbacks.stats(),
        )

    async def _all_queues(self) -> list[str]:
        """Every lane of every queue ever used under the prefix, and this app's."""
        known = set(await self.broker.admin.known_queues())
        for name in sorted(q for q in known if not valid_lane(q)):
            log.warning("skipping queue %r of the queue set: not a queue name", name[:80])
        return sorted({q for q in known if valid_lane(q)} | set(self.lanes()))

    async def _lanes(self, queue: str | None) -> list[str]:
        """The lanes of `queue`, or of every queue."""
        lanes = await self._all_queues()
        return [name for name in lanes if parse_lane(name).queue == queue] if queue else lanes


def _valid_id(task_id: str) -> bool:
    return len(task_id) == 32 and all(c in "0123456789abcdef" for c in task_id)


def _check_priority(priority: object) -> None:
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "_-." for c in name)


def _not_written(error: Exception | None) -> bool:
    """A refusal by Redis trouble that proves nothing was written (so one more try is safe)."""
    return isinstance(error, BrokerUnavailable) and not isinstance(error, OutcomeUnknown)


async def _write_chunk(
    accepts: AcceptWriter,
    results: list[EnqueueResult | None],
    chunk: list[tuple[int, AcceptRequest]],
) -> None:
    """One chunk of `enqueue_many` into its slots of `results`: Redis trouble refuses just
    its items, each on its own."""
    for _ in range(2):  # one more try, as `enqueue`
        try:
            written = await accepts.write([r for _, r in chunk])
        except OutcomeUnknown as exc:  # each names the task it may be
            written = [EnqueueResult(None, error=exc.naming(r.task_id)) for _, r in chunk]
        except BrokerUnavailable as exc:
            written = [EnqueueResult(None, error=exc) for _ in chunk]
        again = []
        for (i, request), result in zip(chunk, written, strict=True):
            results[i] = result
            if _not_written(result.error):
                again.append((i, request))
        if not again:
            return
        chunk = again  # what Redis refused unwritten
