"""`Admin`: what clients and operators ask of Redis about tasks, workers and queues.

One task's record, waiting for its outcome and cancelling it; the live workers; the dead
letters; and the figures of `spillway stats`, ``/metrics`` and the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.exceptions import ResponseError

from spillway.broker.connection import pubsub_client
from spillway.broker.core import RedisCore
from spillway.broker.keys import GROUP
from spillway.broker.types import as_int, ms
from spillway.broker.waiters import Waiters
from spillway.errors import RecordUnreadable
from spillway.records import DeadTask, QueueStats, Unreadable, WorkerInfo, count

__all__ = ["Admin"]

log = logging.getLogger("spillway.broker")


class Admin:
    """Reads, waits, cancels and figures, over a shared `RedisCore`."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core
        self.waiters = Waiters(
            lambda: pubsub_client(core.client, core.settings.redis_timeout), self.status_for_wait
        )

    async def close(self) -> None:
        await self.waiters.close()

    async def get(self, task_id: str) -> dict[str, str] | None:
        """The raw task record, or None if no task has this id (or it expired)."""
        key = self.core.keys.for_task(task_id).task(task_id)
        try:
            record: dict[str, str] = await self.core.run(lambda: self.core.client.hgetall(key))
        except ResponseError as exc:
            raise _unreadable(task_id, key, exc) from None
        return record or None

    async def status_for_wait(self, task_id: str) -> tuple[str | None, bool]:
        """The task's status (None: no such task), marking its record 'waited' unless it has
        ended (``wait.lua``: finish.lua publishes a run's end only for a marked record); False
        when the mark could not be written, so the caller polls."""
        key = self.core.keys.for_task(task_id).task(task_id)
        reply = await self.core.script("wait", [key], [])
        # What Redis answers is not trusted: any other shape reads as unmarked (polled).
        if not isinstance(reply, list) or len(reply) != 2:
            return None, False
        status = reply[0] if isinstance(reply[0], str) else None
        return status, reply[1] == 1

    async def wait(self, task_id: str, timeout: float) -> bool:
        """Wait until the task is terminal (True) or `timeout` seconds pass (False)."""
        shard = self.core.keys.for_task(task_id)
        return await self.waiters.wait(task_id, shard.channel(task_id), timeout)

    @contextlib.asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set at each change of the task's status, while the block runs.

        Subscribes first, then marks the record 'watched' (``watch.lua``), from which point
        the scripts also publish its starts and its failures with a retry to come; the
        caller reads the record after entering, so no change is missed in between.
        """
        shard = self.core.keys.for_task(task_id)
        async with self.waiters.watch(shard.channel(task_id)) as event:
            await self.core.script("watch", [shard.task(task_id)], [])
            yield event

    async def cancel(self, task_id: str, owner: str | None = None) -> tuple[str, str | None]:
        """Cancel a task: ('cancelled', None) when it was waiting (ended now), ('requested',
        'running') when it runs (its worker is asked to stop it; it ends 'cancelled'),
        ('missing', None) or ('refused', status) once terminal.
        With an `owner`, another owner's task is 'missing'."""
        shard = self.core.keys.for_task(task_id)
        try:
            queue: str | None = await self.core.run(
                lambda: self.core.client.hget(shard.task(task_id), "queue")
            )
        except ResponseError as exc:
            raise _unreadable(task_id, shard.task(task_id), exc) from None
        if queue is None:
            return "missing", None
        keys = [shard.task(task_id), shard.stream(queue), shard.due(queue), shard.counters,
                shard.callbacks, shard.feed]  # fmt: skip
        args = [task_id, GROUP, self.core.result_ttl_ms, shard.channel(task_id), owner or ""]
        if owner is not None:
            args.append("check")
        reply = await self.core.script("cancel", keys, args)
        if reply[0] == "requested":
            return "requested", "running"
        return str(reply[0]), (str(reply[1]) if len(reply) > 1 else None)

    async def workers(self) -> list[WorkerInfo]:
        ttl = ms(self.core.settings.heartbeat_interval * 3)
        now = int(time.time() * 1000)

        async def run() -> list[WorkerInfo]:
            names = await self.core.client.zrangebyscore(self.core.keys.workers, now - ttl, "+inf")
            async with self.core.client.pipeline(transaction=False) as pipe:
                for n in names:
                    pipe.hgetall(self.core.keys.worker(str(n)))
                hashes = await pipe.execute(raise_on_error=False)
            out = []
            for n, h in zip(names, hashes, strict=True):
                if not h:
                    continue  # expired since its heartbeat
                try:
                    if not isinstance(h, dict):
                        raise Unreadable("", "is not a hash")
                    out.append(WorkerInfo.from_hash(h))
                except Unreadable as exc:
                    log.warning("skipping heartbeat %s: %s", self.core.keys.worker(str(n)), exc)
            return out

        result: list[WorkerInfo] = await self.core.run(run)
        return result

    # --- dead letters and figures ------------------------------------------------------------

    async def known_queues(self) -> list[str]:
        members: set[str] = await self.core.run(
            lambda: self.core.client.smembers(self.core.keys.queues)
        )
        return sorted(members)

    async def dlq_list(self, queues: Sequence[str], limit: int = 100) -> list[DeadTask]:
        """The newest dead letters of these queues, newest first."""
        pairs = [(s, q) for s in self.core.keys.all_shards() for q in queues]

        async def run() -> list[Any]:
            async with self.core.client.pipeline(transaction=False) as pipe:
                for s, q in pairs:
                    pipe.xrevrange(s.dead(q), count=limit)
                return list(await pipe.execute(raise_on_error=False))

        found = []
        for (s, q), entries in zip(pairs, await self.core.run(run), strict=True):
            if isinstance(entries, Exception):
                log.warning("skipping dead letters %s: %s", s.dead(q), _wrongtype(entries))
                continue
            for eid, f in entries:
                try:
                    found.append(DeadTask.from_entry(eid, f or {}))
                except Unreadable as exc:
                    log.warning("skipping dead letter %s of %s: %s", eid, s.dead(q), exc)
        found.sort(key=lambda d: d.dead_letter_id, reverse=True)
        return found[:limit]

    async def dlq_replay(self, dead: DeadTask) -> bool:
        """Queue a dead-lettered task again under its own id. False if it was already replayed."""
        return await self.dlq_replay_entry(dead.id, dead.queue, dead.dead_letter_id)

    async def dlq_replay_entry(self, task_id: str, queue: str, dead_letter_id: str) -> bool:
        """`dlq_replay` from the dead-letter entry's id (as the task's record keeps it)."""
        shard = self.core.keys.for_task(task_id)
        keys = [
            shard.dead(queue),
            shard.task(task_id),
            shard.stream(queue),
            shard.dead_index(queue),
            shard.feed,
        ]
        reply = await self.core.script("replay", keys, [dead_letter_id, task_id, queue])
        return reply is not None

    async def dlq_replay_id(self, task_id: str, queues: Sequence[str]) -> bool:
        """`dlq_replay` by task id alone (its record has expired), through the dead-letter index.

        One HGET per queue of the task's shard, whatever the dead letters hold.
        """
        shard = self.core.keys.for_task(task_id)

        async def run() -> list[Any]:
            async with self.core.client.pipeline(transaction=False) as pipe:
                for q in queues:
                    pipe.hget(shard.dead_index(q), task_id)
                return list(await pipe.execute(raise_on_error=False))

        for queue, entry in zip(queues, await self.core.run(run), strict=True):
            if isinstance(entry, str) and entry:
                return await self.dlq_replay_entry(task_id, queue, entry)
        return False

    async def dlq_purge(self, queues: Sequence[str]) -> int:
        """Delete every dead letter of these queues; returns how many were deleted."""
        pairs = [(s, q) for s in self.core.keys.all_shards() for q in queues]

        async def run() -> int:
            async with self.core.client.pipeline(transaction=True) as pipe:
                for s, q in pairs:
                    pipe.xlen(s.dead(q))
                    pipe.delete(s.dead(q), s.dead_index(q))
                replies = await pipe.execute()
            return sum(int(n) for n in replies[0::2])

        result: int = await self.core.run(run)
        return result

    async def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        shards = self.core.keys.all_shards()

        async def run() -> list[Any]:
            async with self.core.client.pipeline(transaction=False) as pipe:
                for q in queues:
                    for s in shards:
                        pipe.xlen(s.stream(q))
                        pipe.xpending(s.stream(q), GROUP)
                        pipe.zcard(s.due(q))
                        pipe.xlen(s.dead(q))
                        pipe.zcard(s.held(q))
                return list(await pipe.execute(raise_on_error=False))

        replies = await self.core.run(run)
        out = []
        for i, q in enumerate(queues):
            backlog = pending = delayed = dead = 0
            for j in range(len(shards)):
                xlen, xpending, zcard, dlen, held = replies[(i * len(shards) + j) * 5 :][:5]
                # Held tasks (callers' turns) wait like undelivered entries: backlog.
                backlog += as_int(xlen) + as_int(held)
                pending += int(xpending["pending"]) if isinstance(xpending, dict) else 0
                delayed += as_int(zcard)
                dead += as_int(dlen)
            out.append(QueueStats(queue=q, backlog=backlog, pending=pending, delayed=delayed,
                                  dead=dead))  # fmt: skip
        return out

    async def counters(self) -> dict[str, dict[str, int]]:
        """Stored outcomes by task type, summed over the shards' counters."""

        async def run() -> list[dict[str, str]]:
            async with self.core.client.pipeline(transaction=False) as pipe:
                for shard in self.core.keys.all_shards():
                    pipe.hgetall(shard.counters)
                return list(await pipe.execute(raise_on_error=False))

        out: dict[str, dict[str, int]] = {}
        shards = self.core.keys.all_shards()
        for shard, raw in zip(shards, await self.core.run(run), strict=True):
            if isinstance(raw, Exception):
                log.warning("skipping counters %s: %s", shard.counters, _wrongtype(raw))
                continue
            for field, n in raw.items():
                task_type, _, kind = field.rpartition("|")
                try:
                    stored = count(n)
                except ValueError:
                    log.warning("skipping counter %r of %s: not a number", field, shard.counters)
                    continue
                per_type = out.setdefault(task_type, {})
                per_type[kind] = per_type.get(kind, 0) + stored
        return out


def _wrongtype(exc: Exception) -> str:
    """What a command's error reply says about the data (WRONGTYPE: a key of another type)."""
    if isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE"):
        return "the key holds another type"
    raise exc


def _unreadable(task_id: str, key: str, exc: ResponseError) -> RecordUnreadable:
    reason = _wrongtype(exc)
    log.warning("task %s: its record %s cannot be read: %s", task_id, key, reason)
    return RecordUnreadable(task_id, reason)
