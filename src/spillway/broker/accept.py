"""`AcceptWriter`: validate a task into a write, and write it durably with `accept.lua`.

Every way a task enters Spillway ends here: `Spillway.enqueue` and the API's single-task
routes call `accept`, which coalesces the tasks of concurrent callers into one round trip;
`Spillway.enqueue_many` and ``POST /tasks/batch`` call `write` with their tasks at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson

from spillway.broker.batch import Batch
from spillway.broker.core import RedisCore
from spillway.broker.keys import new_task_id, shard_of
from spillway.broker.types import AcceptRequest, ms
from spillway.errors import (
    BacklogFull,
    BrokerUnavailable,
    IdempotencyConflict,
    OutcomeUnknown,
    PayloadInvalid,
)
from spillway.records import EnqueueResult
from spillway.tasks import TaskDef

__all__ = ["AcceptWriter"]

log = logging.getLogger("spillway.broker")

# A task waiting for the next round trip, and the future of its id.
_Waiting = tuple[AcceptRequest, "asyncio.Future[str]"]


class AcceptWriter:
    """Turns tasks into `AcceptRequest`s and writes them, each accepted or refused on its own."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core
        s = core.settings
        self._idempotency_ttl_ms = ms(s.idempotency_ttl)
        self._limit = max(1, -(-s.backlog_limit // s.shards))  # per shard stream
        # The tasks waiting for the next round trip; its deadline (its first caller's), the
        # timer that fails its callers when that passes, and the batch it goes out in (which
        # tells the timer whether it was sent).
        self._queue: list[_Waiting] = []
        self._deadline = 0
        self._timer: asyncio.TimerHandle | None = None
        self._batch = Batch()
        self._flusher: asyncio.Task[None] | None = None

    def prepare(
        self,
        task: TaskDef,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        delay: float | timedelta | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> AcceptRequest:
        """Validate and serialise one task without writing it (`PayloadInvalid` if it is bad)."""
        limit = self.core.settings.max_payload_bytes
        encoded = task.encode(payload)
        if len(encoded) > limit:
            raise PayloadInvalid(
                task.name, [{"loc": ["payload"], "msg": f"larger than {limit} bytes"}]
            )
        delay_s = delay.total_seconds() if isinstance(delay, timedelta) else (delay or 0.0)
        if delay_s < 0:
            raise PayloadInvalid(task.name, [{"loc": ["delay"], "msg": "must not be negative"}])
        policy = task.policy.replace(max_retries=max_retries, timeout=timeout)
        shards = self.core.settings.shards
        if idempotency_key is None:
            scoped, task_id, fingerprint = None, new_task_id(), ""
        else:
            # The same key always maps to the same shard, where its first task's id is kept.
            scoped = hashlib.sha256(idempotency_key.encode()).hexdigest()
            task_id = new_task_id(shard_of(scoped, shards), shards)
            canonical = orjson.dumps(orjson.loads(encoded), option=orjson.OPT_SORT_KEYS)
            fingerprint = hashlib.sha256(
                b"|".join([task.name.encode(), canonical, f"{delay_s}|{policy.text}".encode()])
            ).hexdigest()[:32]
        return AcceptRequest(
            task_id=task_id,
            type=task.name,
            queue=task.queue,
            payload=encoded,
            policy=policy,
            delay_ms=int(delay_s * 1000),
            idempotency_key=scoped,
            fingerprint=fingerprint,
        )

    def accept(self, request: AcceptRequest) -> asyncio.Future[str]:
        """Write one task with those of concurrent callers; the future of the task's id.

        The future raises `IdempotencyConflict`, `BacklogFull` or `BrokerUnavailable` when the
        task was refused. Each caller waits at most its own budget from the moment it called,
        even when its batch is queued behind a stuck one, and the script writes nothing if
        Redis runs it after that, so a `BrokerUnavailable` means nothing was written. Only a
        connection that breaks after the batch was sent leaves the outcome unknown:
        `OutcomeUnknown`, naming the task.
        """
        if not self.core.is_ready:
            # The budget starts once the server is checked (the first use only).
            return asyncio.ensure_future(self._accept_when_ready(request))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        queue = self._queue
        if not queue:
            # The batch's first caller sets its deadline and one timer for all of it; those
            # after it called later, so each is still held to at most its own budget.
            budget = self.core.settings.redis_timeout * 2
            self._deadline = self.core.deadline_ms(budget)
            self._batch = batch = self.core.batch(replicated=True)
            self._timer = loop.call_later(budget, _give_up, queue, batch, budget)
        queue.append((request, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _accept_when_ready(self, request: AcceptRequest) -> str:
        await self.core.ready()
        return await self.accept(request)

    async def _flush(self) -> None:
        while self._queue:
            waiting, self._queue = self._queue, []
            deadline, timer, batch = self._deadline, self._timer, self._batch
            try:
                results = await self.write([r for r, _ in waiting], deadline, batch)
            except BaseException as exc:  # every caller must hear of the failure
                for request, future in waiting:
                    if not future.done():
                        if isinstance(exc, OutcomeUnknown):  # each names the task it may be
                            future.set_exception(exc.naming(request.task_id))
                        else:
                            future.set_exception(exc)
                        future.exception()  # its caller may have gone: no "never retrieved"
                if not isinstance(exc, Exception):
                    raise
                continue
            finally:
                if timer is not None:
                    timer.cancel()
            given_up = []
            for (_, future), result in zip(waiting, results, strict=True):
                if not future.done():
                    if result.error is None:
                        future.set_result(result.task_id or "")
                    else:
                        future.set_exception(result.error)
                elif (
                    result.ok
                    and not result.duplicate
                    and not future.cancelled()
                    and future.exception()
                ):
                    given_up.append(result.task_id or "")
            if given_up:
                # Their callers were told the outcome is unknown; now it is known, so say it.
                log.warning(
                    "Redis wrote %d task(s) whose callers were answered 503 (outcome unknown) "
                    "before its reply was read: %s",
                    len(given_up), ", ".join(given_up[:10]),
                )  # fmt: skip

    async def write(
        self,
        requests: Sequence[AcceptRequest],
        deadline: int | None = None,
        batch: Batch | None = None,
    ) -> list[EnqueueResult]:
        """Write many tasks in one round trip; each is accepted or refused on its own.

        One script call per shard and queue (its keys share a slot). `deadline` (Redis clock,
        ms) is when the callers give up: past it nothing is written. Raises
        `BrokerUnavailable` (or `OutcomeUnknown`) when the round trip itself fails.
        """
        await self.core.ready()
        keys_of = self.core.keys
        shards = self.core.settings.shards
        groups: dict[tuple[int, str], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((shard_of(r.task_id, shards), r.queue), []).append(i)
        # The callers give up at their deadline, or when the reply takes longer than the socket
        # timeout from now, whichever comes first.
        script_deadline = self.core.deadline_ms(self.core.settings.redis_timeout)
        if deadline is not None:
            script_deadline = min(script_deadline, deadline)

        def build(pipe: Batch) -> None:
            for (k, queue), idx in groups.items():
                shard = keys_of.shard(k)
                records: list[str] = []
                idems: list[str] = []
                args: list[Any] = [self._limit, self._idempotency_ttl_ms, script_deadline, queue]
                for i in idx:
                    r = requests[i]
                    records.append(shard.task(r.task_id))
                    if r.idempotency_key:
                        idems.append(shard.idempotency(r.idempotency_key))
                    args += (r.task_id, r.type, r.payload, r.delay_ms, r.policy.text,
                             r.fingerprint if r.idempotency_key else "")  # fmt: skip
                keys = [shard.stream(queue), shard.due(queue), *records, *idems]
                self.core.scripts.queue(pipe, "accept", keys, args)

        results: list[EnqueueResult | None] = [None] * len(requests)
        written = await self.core.pipeline(build, replicated=True, batch=batch)
        for idx, items in zip(groups.values(), written, strict=True):
            if items == "late":
                # Only this group: one that Redis ran before it, still in time, was written.
                late = BrokerUnavailable("Redis ran the accept after its deadline: not written")
                for i in idx:
                    results[i] = EnqueueResult(None, error=late)
                continue
            for i, item in zip(idx, items, strict=True):
                results[i] = self._result(requests[i], item)
        return [r for r in results if r is not None]

    def _result(self, request: AcceptRequest, item: Any) -> EnqueueResult:
        """One task's reply of `accept.lua`: 1, or 'duplicate|id', 'conflict|id', 'full|n'."""
        if item == 1:
            return EnqueueResult(request.task_id)
        status, _, value = str(item).partition("|")
        if status == "duplicate":
            return EnqueueResult(value, duplicate=True)
        if status == "conflict":
            return EnqueueResult(
                None, error=IdempotencyConflict(request.idempotency_key or "", value)
            )
        limit = self.core.settings.backlog_limit
        return EnqueueResult(None, error=BacklogFull(request.queue, limit, retry_after=1.0))


def _give_up(waiting: list[_Waiting], batch: Batch, budget: float) -> None:
    """A batch's budget ran out: its callers answer 503.

    If it was never sent, nothing was written, and the script will not write it late. If it
    was, Redis may have run it in time and been stopped before its reply left.
    """
    error = (OutcomeUnknown if batch.sent else BrokerUnavailable)(
        f"Redis did not answer within {budget:g} s"
    )
    for request, future in waiting:
        if not future.done():
            if isinstance(error, OutcomeUnknown):
                future.set_exception(error.naming(request.task_id))
            else:
                future.set_exception(error)
