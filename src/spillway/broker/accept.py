"""`AcceptWriter`: validate a task into a write, and write it durably with `accept.lua`.

Every way a task enters Spillway ends here: `Spillway.enqueue` and the API's single-task
routes call `accept`, which coalesces the tasks of concurrent callers into one round trip;
`Spillway.enqueue_many` and ``POST /tasks/batch`` call `write` with their tasks at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson

from spillway.broker.batch import Batch
from spillway.broker.core import RedisCore
from spillway.broker.keys import GROUP, new_task_id, shard_of
from spillway.broker.types import AcceptRequest, ms
from spillway.errors import (
    BacklogFull,
    BrokerUnavailable,
    CallerQuotaFull,
    IdempotencyConflict,
    OutcomeUnknown,
    PayloadInvalid,
)
from spillway.expiry import expiry_seconds
from spillway.lanes import PRIORITIES, Priority
from spillway.loops import LoopCache
from spillway.pacing import Bounds, Pacer
from spillway.records import EnqueueResult
from spillway.settings import Settings
from spillway.tasks import TaskDef
from spillway.webhooks import check_url

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
        #: A caller's waiting tasks per shard lane (SPILLWAY_CALLER_QUOTA); None: callers are
        #: not tracked, and accept.lua gets neither the held keys nor the caller.
        self._quota = max(1, int(s.caller_quota * self._limit)) if s.tracks_callers else None
        #: The waits a refusal advises, from the drain rate `spillway.broker.drain` samples.
        self.pacer = Pacer(
            Bounds(s.retry_after_min, s.retry_after_max, s.retry_after_jitter),
            limit=self._limit * s.shards,
            shards=s.shards,
            slow_down_at=s.slow_down_at,
            halflife=s.drain_halflife,
        )
        #: lane -> the wait its 202s advise, only while it is above SPILLWAY_SLOW_DOWN_AT:
        #: empty (one truth test per 202) otherwise. The pacer's own dict, updated in place.
        self.slow_down = self.pacer.slow
        # The tasks waiting for the next round trip; its deadline (its first caller's), the
        # timer that fails its callers when that passes, and the batch it goes out in (which
        # tells the timer whether it was sent).
        self._queue: list[_Waiting] = []
        self._deadline = 0
        self._timer: asyncio.TimerHandle | None = None
        self._batch = Batch()
        self._flusher: asyncio.Task[None] | None = None
        #: The running loop, asked of asyncio once per loop (spillway.loops); the accept
        #: route shares it.
        self.loops = LoopCache()
        # Under load, writes are at least `accept_linger` apart (see `_flush`): the last
        # write's start (event-loop clock) and how many tasks it carried.
        self._linger = s.accept_linger
        self._written_at = -math.inf
        self._gathered = 0

    def prepare(
        self,
        task: TaskDef,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        delay: float | timedelta | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        owner: str = "",
        priority: Priority | None = None,
        expires: float | timedelta | None = None,
        caller: str = "",
        callback_url: str | None = None,
    ) -> AcceptRequest:
        """Validate and serialise one task without writing it (`PayloadInvalid` if it is bad).

        `owner` (the API caller that submits it, '' for none) is stored with the task: a client
        key sees only the tasks it owns. `expires` replaces the type's default expiry. `caller`
        names whose turn the task waits for and whose quota it counts against, when callers
        are tracked (docs/architecture.md#callers). `callback_url` replaces the type's
        completion webhook (spillway.webhooks.check_url says which URLs may be named)."""
        limit = self.core.settings.max_payload_bytes
        encoded = task.encode(payload)
        if len(encoded) > limit:
            raise PayloadInvalid(
                task.name, [{"loc": ["payload"], "msg": f"larger than {limit} bytes"}]
            )
        delay_s = delay.total_seconds() if isinstance(delay, timedelta) else (delay or 0.0)
        if delay_s < 0:
            raise PayloadInvalid(task.name, [{"loc": ["delay"], "msg": "must not be negative"}])
        # Inline for the common case: a task without expiry costs one comparison here.
        expires_s = (
            None if expires is None and task.expires is None else _expiry(task, expires, delay_s)
        )
        callback = task.callback_url if callback_url is None else callback_url
        if callback:
            _check_callback(task, callback, self.core.settings)
        policy = task.policy.replace(max_retries=max_retries, timeout=timeout)
        lane = task.lanes.get(priority)  # None (the type's own) and every level are there
        if lane is None:
            raise _bad_priority(task)
        shards = self.core.settings.shards
        if idempotency_key is None:
            scoped, task_id, fingerprint = None, new_task_id(), ""
        else:
            # The same key always maps to the same shard, where its first task's id is kept.
            scoped = hashlib.sha256(idempotency_key.encode()).hexdigest()
            task_id = new_task_id(shard_of(scoped, shards), shards)
            canonical = orjson.dumps(orjson.loads(encoded), option=orjson.OPT_SORT_KEYS)
            # The lane (the priority) counts only when it is not the type's own, so keys sent
            # before priorities existed keep their fingerprints.
            options = f"{delay_s}|{policy.text}" + (f"|{lane}" if lane != task.lane() else "")
            if expires_s is not None:  # only then: the fingerprints of tasks without one stay
                options += f"|{expires_s}"
            if callback:
                options += f"|{callback}"
            fingerprint = hashlib.sha256(
                b"|".join([task.name.encode(), canonical, options.encode()])
            ).hexdigest()[:32]
        return AcceptRequest(
            task_id=task_id,
            type=task.name,
            queue=lane,
            payload=encoded,
            policy=policy,
            delay_ms=int(delay_s * 1000),
            idempotency_key=scoped,
            fingerprint=fingerprint,
            owner=owner,
            expires_ms=0 if expires_s is None else ms(expires_s),
            caller=caller,
            callback=callback or "",
        )

    def advice(self, lane: str) -> bytes | None:
        """The advisory ``Retry-After`` of a 202 for a task of this lane (jittered), or None
        while the lane is below SPILLWAY_SLOW_DOWN_AT. Callers test `slow_down` first."""
        wait = self.pacer.advice(lane)
        return None if wait is None else wait.encode()

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
        loop = self.loops.get()
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
            self._flusher = loop.create_task(self._flush())
        return future

    async def _accept_when_ready(self, request: AcceptRequest) -> str:
        await self.core.ready()
        return await self.accept(request)

    async def _flush(self) -> None:
        loop = self.loops.get()
        while self._queue:
            # Under load (the last write carried more than one task) the next write waits out
            # the linger since the last, gathering the tasks that arrive meanwhile: a round
            # trip per few tasks cost Redis and this process more than the wait costs their
            # callers (docs/benchmarks.md, "CPU budget per task"). One caller awaiting one
            # task after another never waits, nor a task after a quiet spell. A cancellation
            # here leaves the queue to the next caller's flusher or its timer.
            if self._gathered > 1:
                wait = self._written_at + self._linger - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            waiting, self._queue = self._queue, []
            self._gathered, self._written_at = len(waiting), loop.time()
            deadline, timer, batch = self._deadline, self._timer, self._batch
            try:
                results = await self.write([r for r, _ in waiting], deadline, batch)
            except BaseException as exc:  # every caller must hear of the failure
                error = exc
                flusher = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and not (
                    flusher is None or flusher.cancelling()
                ):
                    # A cancellation nobody asked for, out of the Redis call (seen mid-failover:
                    # docs/reliability.md finding 22): the batch may have been written, so its
                    # callers get the 503 of an unknown outcome, not a 500, and the flusher
                    # goes on with the next batch.
                    error = OutcomeUnknown("the write to Redis was interrupted")
                for request, future in waiting:
                    if not future.done():
                        if isinstance(error, OutcomeUnknown):  # each names the task it may be
                            future.set_exception(error.naming(request.task_id))
                        else:
                            future.set_exception(error)
                        future.exception()  # its caller may have gone: no "never retrieved"
                if not isinstance(error, Exception):
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
        quota = self._quota
        # One group per shard and lane, and per caller when callers are tracked.
        groups: dict[tuple[int, str, str], list[int]] = {}
        for i, r in enumerate(requests):
            caller = "" if quota is None else r.caller
            groups.setdefault((shard_of(r.task_id, shards), r.queue, caller), []).append(i)
        # The callers give up at their deadline, or when the reply takes longer than the socket
        # timeout from now, whichever comes first.
        script_deadline = self.core.deadline_ms(self.core.settings.redis_timeout)
        if deadline is not None:
            script_deadline = min(script_deadline, deadline)

        def build(pipe: Batch) -> None:
            for (k, queue, caller), idx in groups.items():
                shard = keys_of.shard(k)
                records: list[str] = []
                idems: list[str] = []
                # A trace and a callback are sent only in batches where a task has one.
                extras = any(requests[i].trace or requests[i].callback for i in idx)
                args: list[Any] = [self._limit, self._idempotency_ttl_ms, script_deadline, queue,
                                   10 if extras else 8]  # fmt: skip
                for i in idx:
                    r = requests[i]
                    records.append(shard.task(r.task_id))
                    if r.idempotency_key:
                        idems.append(shard.idempotency(r.idempotency_key))
                    args += (r.task_id, r.type, r.payload, r.delay_ms, r.policy.text,
                             r.fingerprint if r.idempotency_key else "", r.owner,
                             r.expires_ms or "")  # fmt: skip
                    if extras:
                        args += (r.trace, r.callback)
                keys = [shard.stream(queue), shard.due(queue), shard.feed, *records, *idems]
                if quota is not None:
                    keys += (shard.held(queue), shard.rounds(queue))
                    args += (caller, quota, GROUP)
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
        if status == "quota":
            # Its own share drains a task a round, rounds at the pace `DrainSampler` measures.
            quota = self._quota or 1
            wait = self.pacer.caller_retry_after(request.queue, _int(value, quota), quota)
            return EnqueueResult(
                None, error=CallerQuotaFull(request.queue, quota * self.core.settings.shards, wait)
            )
        limit = self.core.settings.backlog_limit
        try:
            wait = self.pacer.retry_after(request.queue, int(value))
        except ValueError:  # not 'full|<n>': no figure to pace by
            wait = self.pacer.retry_after(request.queue, self._limit)
        return EnqueueResult(None, error=BacklogFull(request.queue, limit, retry_after=wait))


def _int(value: str, default: int) -> int:
    try:
        return int(value)
    except ValueError:
        return default


def _expiry(task: TaskDef, expires: float | timedelta | None, delay_s: float) -> float | None:
    """A task's expiry in seconds (its own, else its type's), checked against its delay."""
    try:
        expires_s = task.expires if expires is None else expiry_seconds(expires)
    except ValueError as exc:
        raise PayloadInvalid(task.name, [{"loc": ["expires"], "msg": str(exc)}]) from None
    if expires_s is not None and delay_s >= expires_s:
        # The deadline counts from the accept, so such a task could only ever expire.
        msg = f"{expires_s:g} s must be longer than the delay ({delay_s:g} s)"
        raise PayloadInvalid(task.name, [{"loc": ["expires"], "msg": msg}])
    return expires_s


def _check_callback(task: TaskDef, url: str, settings: Settings) -> None:
    """`PayloadInvalid` (422 over HTTP) naming `callback_url` unless a task may carry it."""
    try:
        check_url(url, settings.callback_networks)
    except ValueError as exc:
        raise PayloadInvalid(task.name, [{"loc": ["callback_url"], "msg": str(exc)}]) from None


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


def _bad_priority(task: TaskDef) -> PayloadInvalid:
    """A level that does not exist: `PayloadInvalid` (422 over HTTP) naming the field."""
    levels = ", ".join(PRIORITIES)
    return PayloadInvalid(task.name, [{"loc": ["priority"], "msg": f"must be one of {levels}"}])
