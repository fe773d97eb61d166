"""`WorkerOps`: what a worker process asks of Redis, from reading deliveries to storing outcomes.

Take new entries and begin them in one call under load (`take`, `take.lua`), or read them with
a blocking wait (`read`) or reclaim a dead worker's (`reclaim`) and then begin them (`begin`,
`begin.lua`; both scripts decide each delivery by `start.lua`), store each outcome once
(`finish`, `finish.lua`), keep or hand back claims (`renew`, `release`), move due tasks into
their streams (`promote_due`), and announce the worker (`heartbeat`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from spillway.broker.batch import Batch
from spillway.broker.core import RedisCore
from spillway.broker.keys import GROUP
from spillway.broker.pauses import parse_paused
from spillway.broker.types import (
    Delivery,
    DueCheck,
    Outcome,
    Started,
    as_int,
    ms,
    stream_items,
)
from spillway.records import WorkerInfo
from spillway.retry import RetryPolicy

__all__ = ["WorkerOps"]

log = logging.getLogger("spillway.worker")


class WorkerOps:
    """The worker side of the broker, over a shared `RedisCore`."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def read(
        self, consumer: str, streams: dict[str, tuple[str, int]], count: int, block_ms: int | None
    ) -> list[Delivery]:
        """New entries for this consumer (XREADGROUP >), waiting up to `block_ms`."""
        wait = (block_ms or 0) / 1000 + self.core.settings.redis_timeout * 2
        try:
            async with self.core.guard(wait):
                client = self.core.blocking if block_ms else self.core.client
                if isinstance(client, RedisCluster):
                    # Sent straight to the stream's node: redis-py would otherwise ask a
                    # default node (COMMAND GETKEYS) where XREADGROUP's keys are, a round trip
                    # per read that also fails for as long as that node is down.
                    args: list[Any] = ["GROUP", GROUP, consumer, "COUNT", count]
                    if block_ms is not None:
                        args += ["BLOCK", block_ms]
                    args += ["STREAMS", *streams, *([">"] * len(streams))]
                    node = client.get_node_from_key(next(iter(streams)))
                    reply = await client.execute_command("XREADGROUP", *args, target_nodes=node)
                else:
                    reply = await client.xreadgroup(
                        GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
                    )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                # The stream was deleted (purge, or a Redis restarted without persistence).
                await self.core.register_queues(sorted({q for q, _ in streams.values()}))
                return []
            raise
        return await self._deliveries(streams, stream_items(reply))

    async def take(
        self, consumer: str, streams: dict[str, tuple[str, int]], count: int
    ) -> list[tuple[Delivery, Started | None]]:
        """Up to `count` new entries of one shard's lanes, taken in the order of `streams` and
        begun in the same call (``take.lua``): each delivery with its run, or None where
        `begin` would have given None. Starts the lanes' held tasks when their streams run
        short; never waits."""
        lanes = list(streams.values())
        shard = self.core.keys.shard(lanes[0][1])
        keys = [*streams]
        for lane_keys in (shard.held, shard.rounds, shard.dead, shard.dead_index):
            keys += [lane_keys(q) for q, _ in lanes]
        keys += [shard.counters, shard.callbacks, shard.feed]
        args: list[Any] = [GROUP, consumer, count, shard.task("")]
        args += [self.core.result_ttl_ms, shard.channel_prefix]
        # Through the pipeline's wire, as begin and finish: redis-py's own command path (its
        # pool, retry and response callbacks) was 5 % of a worker's samples at 5,000 tasks/s.
        try:
            (reply,) = await self.core.pipeline(
                lambda pipe: self.core.scripts.queue(pipe, "take", keys, args)
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                await self.core.register_queues(sorted({q for q, _ in streams.values()}))
                return []
            raise
        deliveries: list[Delivery] = []
        items: list[Any] = []
        # What Redis answers is not trusted: entries of another shape are not started.
        for stream, entries in reply or ():
            queue, k = streams[str(stream)]
            for entry_id, task_id, item in entries:
                if task_id is None:
                    await self.dead_letter_malformed(queue, k, str(entry_id), _pairs(item))
                    continue
                deliveries.append(Delivery(queue, k, str(entry_id), str(task_id)))
                items.append(item)
        return list(zip(deliveries, await self._runs(deliveries, items), strict=True))

    async def _deliveries(
        self,
        streams: dict[str, tuple[str, int]],
        items: list[tuple[str, list[tuple[str, dict[str, str]]]]],
    ) -> list[Delivery]:
        out: list[Delivery] = []
        for stream, entries in items:
            queue, shard = streams[stream]
            for entry_id, fields in entries:
                if fields and "id" in fields:
                    out.append(Delivery(queue, shard, entry_id, fields["id"]))
                else:
                    await self.dead_letter_malformed(queue, shard, entry_id, fields)
        return out

    async def dead_letter_malformed(
        self, queue: str, shard: int, entry_id: str, fields: dict[str, str] | None
    ) -> None:
        """Move an entry Spillway did not write (no task id) to the dead letters, unrun.

        Its fields are kept as JSON text for inspection; nothing in them is ever executed.
        """
        keys = self.core.keys.shard(shard)
        stream = keys.stream(queue)
        raw = orjson.dumps(fields or {}, default=str).decode()
        async with self.core.guard(), self.core.client.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.dead(queue), {
                "id": "", "type": "", "queue": queue, "payload": raw, "attempts": 1,
                "error": "Malformed: a stream entry without a Spillway task id", "traceback": "",
                "failed_at": int(time.time() * 1000),
            })  # fmt: skip
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            await pipe.execute()

    async def reclaim(
        self, consumer: str, queue: str, shard: int, min_idle_ms: int, count: int, cursor: str
    ) -> tuple[str, list[Delivery]]:
        """Claim entries idle longer than `min_idle_ms` (their consumer is presumed dead)."""
        stream = self.core.keys.shard(shard).stream(queue)
        try:
            reply = await self.core.run(
                lambda: self.core.client.xautoclaim(
                    stream, GROUP, consumer, min_idle_ms, start_id=cursor, count=count
                )
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return "0-0", []
            raise
        next_cursor, entries = str(reply[0]), reply[1]
        out: list[Delivery] = []
        for entry_id, fields in entries:
            if fields and "id" in fields:
                out.append(Delivery(queue, shard, entry_id, fields["id"]))
            elif entry_id:
                await self.dead_letter_malformed(queue, shard, entry_id, fields)
        return next_cursor, out

    async def begin(
        self, deliveries: Sequence[Delivery], fresh: bool = False
    ) -> list[Started | None]:
        """Mark deliveries running and count their attempts; None for skipped or dead-lettered.

        `fresh`: every delivery was just read as new (`read`), so each was delivered once and
        its count need not be read from the PEL; not for `reclaim`'s. (`take` reads and
        begins in one call.)
        """
        by_stream: dict[tuple[str, int], list[int]] = {}
        for i, d in enumerate(deliveries):
            by_stream.setdefault((d.queue, d.shard), []).append(i)

        def build(pipe: Batch) -> None:
            for (queue, k), idx in by_stream.items():
                shard = self.core.keys.shard(k)
                keys = [shard.stream(queue), shard.dead(queue), shard.counters]
                keys += [shard.dead_index(queue), shard.callbacks, shard.feed]
                keys += [shard.task(deliveries[i].task_id) for i in idx]
                args: list[Any] = [GROUP, self.core.result_ttl_ms, shard.channel_prefix]
                args.append("1" if fresh else "")
                args += [deliveries[i].entry_id for i in idx]
                self.core.scripts.queue(pipe, "begin", keys, args)

        replies = await self.core.pipeline(build)
        items: list[Any] = [None] * len(deliveries)
        for idx, reply in zip(by_stream.values(), replies, strict=True):
            for i, item in zip(idx, reply, strict=True):
                items[i] = item
        return await self._runs(deliveries, items)

    async def _runs(
        self, deliveries: Sequence[Delivery], items: Sequence[Any]
    ) -> list[Started | None]:
        """The run of each delivery from start.lua's item for it (None: not to run); a record
        whose policy cannot be read is dead-lettered (start.lua marked it running)."""
        out: list[Started | None] = [None] * len(deliveries)
        unreadable: list[Outcome] = []
        for i, item in enumerate(items):
            if not isinstance(item, list) or not item or item[0] != "run":
                continue
            d, task_type, attempts = deliveries[i], str(item[1]), int(item[3])
            try:
                policy = RetryPolicy.decode(str(item[4]))
            except ValueError:
                # A record Spillway did not write: its run would have no timeout or retry
                # budget, so it is dead-lettered unrun (start.lua marked it running: finish
                # may write it).
                log.warning("task %s: its record's policy is malformed; dead-lettered unrun",
                            d.task_id)  # fmt: skip
                error = "PolicyInvalid: the record's policy is not max_retries|timeout|base|cap"
                unreadable.append(Outcome(d, task_type, "dead", error, attempts=attempts))
                continue
            trace = str(item[6]) if len(item) > 6 else ""  # traced only
            out[i] = Started(d, task_type, str(item[2]), attempts, policy, as_int(item[5]), trace)
        if unreadable:
            await self.finish(unreadable)
        return out

    async def finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Write each outcome once (a stale delivery writes nothing), ack and delete its entry."""

        by_stream: dict[tuple[str, int], list[int]] = {}
        for i, o in enumerate(outcomes):
            by_stream.setdefault((o.delivery.queue, o.delivery.shard), []).append(i)

        def build(pipe: Batch) -> None:
            # One script call per stream: its fixed cost is paid per batch, not per task.
            for (queue, k), idx in by_stream.items():
                shard = self.core.keys.shard(k)
                keys = [shard.stream(queue), shard.due(queue), shard.dead(queue), shard.counters,
                        shard.dead_index(queue), shard.callbacks, shard.feed]  # fmt: skip
                args: list[Any] = [GROUP, self.core.result_ttl_ms, shard.channel_prefix]
                for i in idx:
                    o = outcomes[i]
                    d = o.delivery
                    keys.append(shard.task(d.task_id))
                    args += (d.task_id, d.entry_id, o.kind, o.value, o.traceback,
                             o.retry_delay_ms, o.attempts)  # fmt: skip
                self.core.scripts.queue(pipe, "finish", keys, args)

        written = [False] * len(outcomes)
        replies = await self.core.pipeline(build)
        for idx, reply in zip(by_stream.values(), replies, strict=True):
            # What Redis answers is not trusted: a reply of another shape wrote nothing we know.
            if isinstance(reply, list):
                for i, r in zip(idx, reply, strict=False):
                    written[i] = r == 1
        return written

    async def renew(
        self, consumer: str, deliveries: Sequence[Delivery]
    ) -> tuple[int, list[Delivery]]:
        """Reset the idle time of deliveries this consumer still runs (claim renewal); how many
        were renewed, and which of them run a task whose cancellation was requested."""
        groups: dict[tuple[str, int], list[Delivery]] = {}
        for d in deliveries:
            groups.setdefault((d.queue, d.shard), []).append(d)
        if not groups:
            return 0, []

        def build(pipe: Batch) -> None:
            for (queue, k), ds in groups.items():
                shard = self.core.keys.shard(k)
                keys = [shard.stream(queue), *(shard.task(d.task_id) for d in ds)]
                args = [GROUP, consumer, *(d.entry_id for d in ds)]
                self.core.scripts.queue(pipe, "renew", keys, args)

        renewed, cancel = 0, []
        for ds, reply in zip(groups.values(), await self.core.pipeline(build), strict=True):
            # What Redis answers is not trusted: an unexpected reply asks for nothing.
            if not isinstance(reply, list) or not reply:
                continue
            renewed += as_int(reply[0])
            marked = {str(e) for e in reply[1:]}
            cancel += [d for d in ds if d.entry_id in marked]
        return renewed, cancel

    async def release(self, consumer: str, deliveries: Sequence[Delivery]) -> int:
        """Make deliveries this consumer will not finish reclaimable at once (shutdown)."""
        idle = ms(self.core.settings.visibility_timeout) + 1000
        return await self._per_stream("release", consumer, deliveries, [idle])

    async def _per_stream(
        self, script: str, consumer: str, deliveries: Sequence[Delivery], extra: list[Any]
    ) -> int:
        groups: dict[tuple[str, int], list[str]] = {}
        for d in deliveries:
            groups.setdefault((d.queue, d.shard), []).append(d.entry_id)
        if not groups:
            return 0

        def build(pipe: Batch) -> None:
            for (queue, k), ids in groups.items():
                keys = [self.core.keys.shard(k).stream(queue)]
                self.core.scripts.queue(pipe, script, keys, [GROUP, consumer, *extra, *ids])

        return sum(int(n) for n in await self.core.pipeline(build))

    async def promote_due(self, queues: Sequence[str], limit: int = 1000) -> DueCheck:
        """Move delayed and retry-waiting tasks whose time has come into their streams.

        The paused queues are read in the same round trip as the due ids (``paused.lua``): the
        worker's view of them is as fresh as its due-task check, at no cost of its own.
        """
        pairs = [(s, q) for s in self.core.keys.all_shards() for q in queues]

        def ask(pipe: Batch) -> None:
            self.core.scripts.queue(pipe, "paused", [self.core.keys.paused], [])
            for s, q in pairs:
                self.core.scripts.queue(pipe, "due", [s.due(q)], [limit])

        members, *due_lists = await self.core.pipeline(ask)
        paused, malformed = parse_paused(members)
        work = [(s, q, ids) for (s, q), ids in zip(pairs, due_lists, strict=True) if ids]
        if not work:
            return DueCheck(0, paused, malformed)

        def promote(pipe: Batch) -> None:
            for s, q, ids in work:
                keys = [s.due(q), s.stream(q), *(s.task(i) for i in ids)]
                self.core.scripts.queue(pipe, "promote", keys, list(ids))

        promoted = sum(int(n) for n in await self.core.pipeline(promote))
        return DueCheck(promoted, paused, malformed)

    async def backlog(self, queues: Sequence[str]) -> int:
        """Entries in the streams plus tasks in the due and held sets: zero means fully
        drained."""
        pairs = [(s, q) for s in self.core.keys.all_shards() for q in queues]

        async def run() -> int:
            async with self.core.client.pipeline(transaction=False) as pipe:
                for s, q in pairs:
                    pipe.xlen(s.stream(q))
                    pipe.zcard(s.due(q))
                    pipe.zcard(s.held(q))
                return sum(int(n) for n in await pipe.execute())

        result: int = await self.core.run(run)
        return result

    async def prune_consumers(self, queues: Sequence[str], idle_ms: int) -> int:
        """Forget consumers that hold no deliveries and were not seen for `idle_ms`.

        Only consumers with nothing pending are removed: deleting one with pending entries
        would make those entries unclaimable (XGROUP DELCONSUMER drops them).
        """
        pruned = 0
        for stream in self.core.streams(queues):

            async def forget(stream: str = stream) -> int:
                try:
                    consumers = await self.core.client.xinfo_consumers(stream, GROUP)
                except ResponseError:
                    return 0  # no such stream or group yet
                stale = [
                    c["name"]
                    for c in consumers
                    if int(c["pending"]) == 0 and int(c["idle"]) > idle_ms
                ]
                for name in stale:
                    await self.core.client.xgroup_delconsumer(stream, GROUP, name)
                return len(stale)

            pruned += int(await self.core.run(forget))
        return pruned

    async def heartbeat(self, info: WorkerInfo) -> None:
        ttl = ms(self.core.settings.heartbeat_interval * 3)
        now = int(time.time() * 1000)
        key = self.core.keys.worker(info.name)

        async def run() -> None:
            async with self.core.client.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping={
                    "name": info.name, "host": info.host, "pid": info.pid,
                    "queues": ",".join(info.queues), "concurrency": info.concurrency,
                    "in_flight": info.in_flight, "processed": info.processed,
                    "started_at": int(info.started_at.timestamp() * 1000)
                    if info.started_at else 0,
                    "last_seen": now,
                })  # fmt: skip
                pipe.pexpire(key, ttl)
                pipe.zadd(self.core.keys.workers, {info.name: now})
                pipe.zremrangebyscore(self.core.keys.workers, "-inf", now - ttl)
                await pipe.execute()

        await self.core.run(run)

    async def deregister(self, name: str) -> None:
        async def run() -> None:
            async with self.core.client.pipeline(transaction=False) as pipe:
                pipe.zrem(self.core.keys.workers, name)
                pipe.delete(self.core.keys.worker(name))
                await pipe.execute()

        await self.core.run(run)


def _pairs(flat: Any) -> dict[str, str]:
    """A stream entry's fields as a script returns them (a flat list) -> a dict."""
    if not isinstance(flat, list):
        return {}
    return {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=False)}
