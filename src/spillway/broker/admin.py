"""What operators and dashboards ask of Redis: workers, dead letters, figures, housekeeping.

A mixin of `Broker`: it uses the broker's clients, keys and error mapping.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from spillway.broker.connection import AnyRedis
from spillway.broker.keys import GROUP, Keys
from spillway.broker.scripts import Scripts
from spillway.broker.types import as_int, ms
from spillway.records import DeadTask, QueueStats, WorkerInfo, from_ms
from spillway.settings import Settings

__all__ = ["Admin"]


class Admin:
    """Heartbeats and live workers, dead letters, queue figures and consumer housekeeping."""

    client: AnyRedis
    keys: Keys
    scripts: Scripts
    settings: Settings

    async def _run(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        raise NotImplementedError  # provided by Broker

    def streams(self, queues: Sequence[str]) -> dict[str, tuple[str, int]]:
        raise NotImplementedError  # provided by Broker

    async def prune_consumers(self, queues: Sequence[str], idle_ms: int) -> int:
        """Forget consumers that hold no deliveries and were not seen for `idle_ms`.

        Only consumers with nothing pending are removed: deleting one with pending entries
        would make those entries unclaimable (XGROUP DELCONSUMER drops them).
        """
        pruned = 0
        for stream in self.streams(queues):

            async def forget(stream: str = stream) -> int:
                try:
                    consumers = await self.client.xinfo_consumers(stream, GROUP)
                except ResponseError:
                    return 0  # no such stream or group yet
                stale = [
                    c["name"]
                    for c in consumers
                    if int(c["pending"]) == 0 and int(c["idle"]) > idle_ms
                ]
                for name in stale:
                    await self.client.xgroup_delconsumer(stream, GROUP, name)
                return len(stale)

            pruned += int(await self._run(forget))
        return pruned

    # --- workers -----------------------------------------------------------------------------

    async def heartbeat(self, info: WorkerInfo) -> None:
        ttl = ms(self.settings.heartbeat_interval * 3)
        now = int(time.time() * 1000)
        key = self.keys.worker(info.name)

        async def run() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping={
                    "name": info.name, "host": info.host, "pid": info.pid,
                    "queues": ",".join(info.queues), "concurrency": info.concurrency,
                    "in_flight": info.in_flight, "processed": info.processed,
                    "started_at": int(info.started_at.timestamp() * 1000)
                    if info.started_at else 0,
                    "last_seen": now,
                })  # fmt: skip
                pipe.pexpire(key, ttl)
                pipe.zadd(self.keys.workers, {info.name: now})
                pipe.zremrangebyscore(self.keys.workers, "-inf", now - ttl)
                await pipe.execute()

        await self._run(run)

    async def deregister(self, name: str) -> None:
        async def run() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.workers, name)
                pipe.delete(self.keys.worker(name))
                await pipe.execute()

        await self._run(run)

    async def workers(self) -> list[WorkerInfo]:
        ttl = ms(self.settings.heartbeat_interval * 3)
        now = int(time.time() * 1000)

        async def run() -> list[WorkerInfo]:
            names = await self.client.zrangebyscore(self.keys.workers, now - ttl, "+inf")
            async with self.client.pipeline(transaction=False) as pipe:
                for n in names:
                    pipe.hgetall(self.keys.worker(str(n)))
                hashes = await pipe.execute()
            return [
                WorkerInfo(
                    name=h["name"],
                    host=h["host"],
                    pid=int(h["pid"]),
                    queues=[q for q in h["queues"].split(",") if q],
                    concurrency=int(h["concurrency"]),
                    in_flight=int(h["in_flight"]),
                    processed=int(h["processed"]),
                    started_at=from_ms(h["started_at"]),
                    last_seen=from_ms(h["last_seen"]),
                )
                for h in hashes
                if h
            ]

        result: list[WorkerInfo] = await self._run(run)
        return result

    # --- dead letters and figures ------------------------------------------------------------

    async def known_queues(self) -> list[str]:
        members: set[str] = await self._run(lambda: self.client.smembers(self.keys.queues))
        return sorted(members)

    async def dlq_list(self, queues: Sequence[str], limit: int = 100) -> list[DeadTask]:
        """The newest dead letters of these queues, newest first."""
        pairs = [(s, q) for s in self.keys.all_shards() for q in queues]

        async def run() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for s, q in pairs:
                    pipe.xrevrange(s.dead(q), count=limit)
                return list(await pipe.execute())

        found = [
            DeadTask.from_entry(eid, f) for entries in await self._run(run) for eid, f in entries
        ]
        found.sort(key=lambda d: d.dead_letter_id, reverse=True)
        return found[:limit]

    async def dlq_replay(self, dead: DeadTask) -> bool:
        """Queue a dead-lettered task again under its own id. False if it was already replayed."""
        return await self.dlq_replay_entry(dead.id, dead.queue, dead.dead_letter_id)

    async def dlq_replay_entry(self, task_id: str, queue: str, dead_letter_id: str) -> bool:
        """`dlq_replay` from the dead-letter entry's id (as the task's record keeps it)."""
        shard = self.keys.for_task(task_id)
        keys = [shard.dead(queue), shard.task(task_id), shard.stream(queue)]
        reply = await self._run(
            lambda: self.scripts.call(self.client, "replay", keys, [dead_letter_id])
        )
        return reply is not None

    async def dlq_purge(self, queues: Sequence[str]) -> int:
        """Delete every dead letter of these queues; returns how many were deleted."""
        pairs = [(s, q) for s in self.keys.all_shards() for q in queues]

        async def run() -> int:
            async with self.client.pipeline(transaction=True) as pipe:
                for s, q in pairs:
                    pipe.xlen(s.dead(q))
                    pipe.delete(s.dead(q))
                replies = await pipe.execute()
            return sum(int(n) for n in replies[0::2])

        result: int = await self._run(run)
        return result

    async def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        shards = self.keys.all_shards()

        async def run() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for q in queues:
                    for s in shards:
                        pipe.xlen(s.stream(q))
                        pipe.xpending(s.stream(q), GROUP)
                        pipe.zcard(s.due(q))
                        pipe.xlen(s.dead(q))
                return list(await pipe.execute(raise_on_error=False))

        replies = await self._run(run)
        out = []
        for i, q in enumerate(queues):
            backlog = pending = delayed = dead = 0
            for j in range(len(shards)):
                xlen, xpending, zcard, dlen = replies[(i * len(shards) + j) * 4 :][:4]
                backlog += as_int(xlen)
                pending += int(xpending["pending"]) if isinstance(xpending, dict) else 0
                delayed += as_int(zcard)
                dead += as_int(dlen)
            out.append(QueueStats(queue=q, backlog=backlog, pending=pending, delayed=delayed,
                                  dead=dead))  # fmt: skip
        return out

    async def counters(self) -> dict[str, dict[str, int]]:
        """Stored outcomes by task type, summed over the shards' counters."""

        async def run() -> list[dict[str, str]]:
            async with self.client.pipeline(transaction=False) as pipe:
                for shard in self.keys.all_shards():
                    pipe.hgetall(shard.counters)
                return list(await pipe.execute())

        out: dict[str, dict[str, int]] = {}
        for raw in await self._run(run):
            for field, n in raw.items():
                task_type, _, kind = field.rpartition("|")
                per_type = out.setdefault(task_type, {})
                per_type[kind] = per_type.get(kind, 0) + int(n)
        return out
