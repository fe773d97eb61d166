"""`Spillway`: declare tasks, enqueue them, and read or wait for their outcome."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, overload

import orjson

from spillway import metrics
from spillway.broker import AcceptReply, AcceptRequest, Broker, new_task_id, shard_of
from spillway.errors import (
    BacklogFull,
    BrokerUnavailable,
    IdempotencyConflict,
    OutcomeUnknown,
    PayloadInvalid,
    ResultTimeout,
    SpillwayError,
    TaskFailed,
    TaskNotCancellable,
    TaskNotFound,
    UnknownTaskType,
)
from spillway.records import DeadTask, EnqueueResult, Stats, TaskRecord, TaskStatus
from spillway.settings import Settings
from spillway.tasks import Handler, TaskDef

__all__ = ["EnqueueItem", "Spillway"]

F = TypeVar("F", bound=Handler)
# Tasks per accept call in enqueue_many. Chunks are pipelined (Redis runs one while the next
# is prepared); of 50 to 500, 100 overlapped the two best (76-92k tasks/s, 55-78k at 250).
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
        self._checked = False

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
                max_retries=s.max_retries if max_retries is None else max_retries,
                timeout=s.task_timeout if timeout is None else timeout,
                retry_base=s.retry_base if retry_base is None else retry_base,
                retry_cap=s.retry_cap if retry_cap is None else retry_cap,
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
        if self._broker is None:
            self._broker = Broker(self.settings)
        return self._broker

    async def connect(self) -> None:
        """Check the server (version, eviction policy), load scripts and create consumer groups."""
        if not self._checked:
            await self.broker.check_server()
            await self.broker.register_queues(self.queues)
            self._checked = True

    async def close(self) -> None:
        if self._broker is not None:
            await self._broker.close()
            self._broker = None
            self._checked = False

    async def __aenter__(self) -> Spillway:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- enqueueing --------------------------------------------------------------------------

    def prepare(
        self,
        task_type: TaskRef,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        delay: float | timedelta | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> AcceptRequest:
        """Validate and serialise one task without writing it (the API and batches use this)."""
        task = self.resolve(task_type)
        encoded = task.encode(payload)
        if len(encoded) > self.settings.max_payload_bytes:
            raise PayloadInvalid(
                task.name,
                [
                    {
                        "loc": ["payload"],
                        "msg": f"larger than {self.settings.max_payload_bytes} bytes",
                    }
                ],
            )
        delay_s = delay.total_seconds() if isinstance(delay, timedelta) else (delay or 0.0)
        if delay_s < 0:
            raise PayloadInvalid(task.name, [{"loc": ["delay"], "msg": "must not be negative"}])
        retries = task.max_retries if max_retries is None else max_retries
        run_timeout = task.timeout if timeout is None else timeout
        shards = self.settings.shards
        if idempotency_key is not None:
            scoped = hashlib.sha256(idempotency_key.encode()).hexdigest()
            task_id = new_task_id(shard_of(scoped, shards), shards)
            canonical = orjson.dumps(orjson.loads(encoded), option=orjson.OPT_SORT_KEYS)
            fingerprint = hashlib.sha256(
                b"|".join(
                    [task.name.encode(), canonical, f"{delay_s}|{retries}|{run_timeout}".encode()]
                )
            ).hexdigest()[:32]
        else:
            scoped, task_id, fingerprint = None, new_task_id(), ""
        return AcceptRequest(
            task_id=task_id,
            type=task.name,
            queue=task.queue,
            payload=encoded,
            max_retries=retries,
            timeout=run_timeout,
            retry_base=task.retry_base,
            retry_cap=task.retry_cap,
            delay_ms=int(delay_s * 1000),
            idempotency_key=scoped,
            fingerprint=fingerprint,
        )

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
        request = self.prepare(
            task_type, payload, idempotency_key=idempotency_key, delay=delay,
            max_retries=max_retries, timeout=timeout,
        )  # fmt: skip
        return await self.enqueue_prepared(request)

    async def enqueue_prepared(self, request: AcceptRequest) -> str:
        """`enqueue` for a task `prepare` built."""
        return self.accepted_id(request, await self._write(request))

    def write_soon(self, request: AcceptRequest) -> asyncio.Future[AcceptReply]:
        """Start writing a prepared task; its reply's future, for `accepted_id`.

        The API's direct routes use this, to write without a coroutine of their own.
        """
        if self._checked:
            return self.broker.accept_soon(request)
        return asyncio.ensure_future(self._write(request))

    def accepted_id(self, request: AcceptRequest, reply: AcceptReply) -> str:
        """The id `enqueue` returns for `request` once Redis replied (raises as it does)."""
        return self._check(request, reply).task_id or request.task_id

    async def _write(self, request: AcceptRequest) -> AcceptReply:
        await self.connect()
        return await self.broker.accept(request)

    async def enqueue_many(
        self, items: Iterable[EnqueueItem | tuple[TaskRef, Any]]
    ) -> list[EnqueueResult]:
        """Enqueue many tasks; each item is accepted or refused on its own.

        Items go out in pipelined chunks: while Redis writes one chunk, the next is validated
        and encoded, so Python time and Redis time overlap instead of adding up.
        """
        await self.connect()
        results: list[EnqueueResult | None] = []
        requests: list[tuple[int, AcceptRequest]] = []
        writes: list[asyncio.Task[None]] = []
        for item in items:
            it = item if isinstance(item, EnqueueItem) else EnqueueItem(item[0], item[1])
            try:
                request = self.prepare(
                    it.type, it.payload, idempotency_key=it.idempotency_key, delay=it.delay,
                    max_retries=it.max_retries, timeout=it.timeout,
                )  # fmt: skip
            except SpillwayError as exc:
                results.append(EnqueueResult(task_id=None, error=exc))
                continue
            requests.append((len(results), request))
            results.append(None)
            if len(requests) == _CHUNK:
                writes.append(asyncio.create_task(self._write_chunk(results, requests)))
                requests = []
                await asyncio.sleep(0)  # let the chunk go out before preparing the next
        if requests:
            writes.append(asyncio.create_task(self._write_chunk(results, requests)))
        await asyncio.gather(*writes)
        return [r for r in results if r is not None]

    async def _write_chunk(
        self, results: list[EnqueueResult | None], requests: list[tuple[int, AcceptRequest]]
    ) -> None:
        """One chunk of `enqueue_many`: Redis trouble refuses just its items, each on its own."""
        try:
            await self.accept_prepared(results, requests)
        except OutcomeUnknown as exc:  # each names the task it may be
            for i, r in requests:
                results[i] = EnqueueResult(task_id=None, error=exc.naming(r.task_id))
        except BrokerUnavailable as exc:
            for i, _ in requests:
                results[i] = EnqueueResult(task_id=None, error=exc)

    async def accept_prepared(
        self,
        results: list[EnqueueResult | None],
        requests: Sequence[tuple[int, AcceptRequest]],
    ) -> list[EnqueueResult]:
        """Write prepared requests into their `None` slots of `results` (one round trip).

        Raises `BrokerUnavailable` if Redis cannot take them (the slots stay empty).
        """
        if requests:
            await self.connect()
            replies = await self.broker.accept_many([r for _, r in requests])
            for (i, request), reply in zip(requests, replies, strict=True):
                try:
                    out = self._check(request, reply)
                except SpillwayError as exc:
                    results[i] = EnqueueResult(task_id=None, error=exc)
                else:
                    results[i] = out
        return [r for r in results if r is not None]

    def _check(self, request: AcceptRequest, reply: AcceptReply) -> EnqueueResult:
        if reply.status == "ok":
            return EnqueueResult(task_id=request.task_id)
        if reply.status == "duplicate":
            return EnqueueResult(task_id=reply.task_id, duplicate=True)
        if reply.status == "conflict":
            raise IdempotencyConflict(request.idempotency_key or "", reply.task_id)
        if reply.status == "late":
            raise BrokerUnavailable("Redis ran the accept after its deadline: not written")
        raise BacklogFull(request.queue, self.settings.backlog_limit, retry_after=1.0)

    # --- reading -----------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord:
        """The task's status record; `TaskNotFound` for an unknown (or expired) id."""
        raw = await self.broker.get(task_id) if _valid_id(task_id) else None
        if raw is None:
            raise TaskNotFound(task_id)
        return TaskRecord.from_hash(raw)

    async def wait(self, task_id: str, timeout: float) -> TaskRecord:
        """The record once the task is terminal; `ResultTimeout` after `timeout` seconds.

        Wakes on the completion notice the finish script publishes, not by polling.
        """
        record = await self.get(task_id)
        if record.terminal:
            return record
        if not await self.broker.wait(task_id, timeout):
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
        outcome, status = await self.broker.cancel(task_id)
        if outcome == "missing":
            raise TaskNotFound(task_id)
        if outcome == "refused":
            raise TaskNotCancellable(task_id, status or "unknown")
        return await self.get(task_id)

    # --- dead letters and figures ------------------------------------------------------------

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadTask]:
        """The newest dead-lettered tasks (all known queues unless `queue` is given)."""
        queues = [queue] if queue else await self._all_queues()
        return await self.broker.dlq_list(queues, limit)

    async def replay(self, task_id: str) -> bool:
        """Run a dead-lettered task again under its id. False if it is not in the dead letters."""
        raw = await self.broker.get(task_id) if _valid_id(task_id) else None
        if raw is not None and raw.get("dead_letter"):
            return await self.broker.dlq_replay_entry(task_id, raw["queue"], raw["dead_letter"])
        # Its record has expired (dead letters outlive records): look through the dead letters.
        for dead in await self.dead_letters(limit=100_000):
            if dead.id == task_id:
                return await self.broker.dlq_replay(dead)
        return False

    async def replay_all(self, queue: str | None = None, limit: int = 100_000) -> int:
        """Replay every dead letter (of one queue); returns how many were queued again."""
        replayed = 0
        for dead in await self.dead_letters(queue, limit):
            replayed += await self.broker.dlq_replay(dead)
        return replayed

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        queues = [queue] if queue else await self._all_queues()
        return await self.broker.dlq_purge(queues)

    async def stats(self) -> Stats:
        """Backlog, pending, delayed and dead-letter sizes, live workers and per-type counts."""
        queues = await self._all_queues()
        return Stats(
            queues=await self.broker.queue_stats(queues),
            workers=await self.broker.workers(),
            counts=await self.broker.counters(),
        )

    async def _all_queues(self) -> list[str]:
        return sorted(set(await self.broker.known_queues()) | set(self.queues))


def _valid_id(task_id: str) -> bool:
    return len(task_id) == 32 and all(c in "0123456789abcdef" for c in task_id)


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "_-." for c in name)
