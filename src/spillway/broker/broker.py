"""The one boundary to Redis: every command Spillway sends goes through `Broker`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
)

from spillway.broker.admin import Admin
from spillway.broker.batch import Batch
from spillway.broker.connection import AnyRedis, make_client, pubsub_client
from spillway.broker.keys import GROUP, Keys, shard_of
from spillway.broker.redispy_wire import refresh_slots
from spillway.broker.scripts import Scripts
from spillway.broker.senders import make_sender
from spillway.broker.types import (
    AcceptReply,
    AcceptRequest,
    Delivery,
    Outcome,
    Started,
    as_float,
    as_int,
    ms,
    per_node,
    stream_items,
    unavailable,
)
from spillway.broker.waiters import Waiters
from spillway.errors import (
    BrokerUnavailable,
    ConfigurationError,
    EvictionPolicyError,
    OutcomeUnknown,
)
from spillway.settings import Settings

log = logging.getLogger("spillway.broker")

__all__ = ["Broker"]

# A request waiting for the next accept batch, and its caller.
_Waiting = tuple[AcceptRequest, "asyncio.Future[AcceptReply]"]


class Broker(Admin):
    """Owns the Redis clients, key names and scripts; the API, workers and CLI call only this."""

    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise ConfigurationError(
                "SPILLWAY_REDIS_URL is not set. Point it at a Redis >= 6.2, "
                "or run `spillway dev`, which starts an embedded server."
            )
        self.settings = settings
        self.keys = Keys(settings.prefix, settings.shards)
        self.scripts = Scripts()
        self.result_ttl_ms = ms(settings.result_ttl)
        self._idempotency_ttl_ms = ms(settings.idempotency_ttl)
        self.client: AnyRedis = make_client(
            settings.redis_url,
            socket_timeout=settings.redis_timeout,
            connect_timeout=settings.redis_timeout,
            max_connections=64,
        )
        # Blocking reads wait up to block_ms on the server, so they get a longer socket timeout.
        self.blocking: AnyRedis = make_client(
            settings.redis_url,
            socket_timeout=settings.block_ms / 1000 + settings.redis_timeout,
            connect_timeout=settings.redis_timeout,
            max_connections=64,
        )
        self.cluster = isinstance(self.client, RedisCluster)
        # Script batches: one round trip (one per node), see spillway.broker.senders.
        self._sender = make_sender(self.client, settings.redis_timeout, fast=settings.fast_path)
        self._gate: asyncio.Semaphore | contextlib.nullcontext[None] = (
            asyncio.Semaphore(64) if self.cluster else contextlib.nullcontext()
        )
        self.waiters = Waiters(
            lambda: pubsub_client(self.client, settings.redis_timeout), self._terminal_status
        )
        # Requests waiting for the next accept batch, with their callers; the batch's deadline
        # (its first caller's), the timer that fails its callers when that passes, and the
        # batch it will be sent in (which tells the timer whether it was sent).
        self._accept_queue: list[_Waiting] = []
        self._accept_deadline = 0
        self._accept_timer: asyncio.TimerHandle | None = None
        self._accept_batch = Batch()
        self._clock_offset_ms = 0.0
        self._accept_flusher: asyncio.Task[None] | None = None
        # The policy field's text by (max_retries, timeout, retry_base, retry_cap).
        self._policies: dict[tuple[int, float, float, float], str] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        await self.waiters.close()
        await self._sender.close()
        for client in (self.client, self.blocking):
            if isinstance(client, Redis):
                # The pool was passed in explicitly, so the client would not close it by itself.
                await client.aclose(close_connection_pool=True)
            else:
                await client.aclose()

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _guard(self, timeout: float | None = None) -> AsyncIterator[None]:
        """Bound a call in time and turn "Redis is down or refusing" into `BrokerUnavailable`.

        Bugs (any other error) pass through. On a cluster, calls also wait for one of a bounded
        number of slots: a burst of new connections to one node overflows its accept backlog.
        """
        try:
            async with asyncio.timeout(timeout or self.settings.redis_timeout * 2), self._gate:
                yield
        except NoScriptError:
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            mapped = unavailable(exc)
            if mapped is None:
                raise
            if self.cluster and (
                not isinstance(exc, ResponseError) or isinstance(exc, ClusterDownError)
            ):
                # A node unreachable or the cluster down: perhaps a failover, so learn the new
                # slot map before the caller tries again (not for a full or busy node).
                for client in (self.client, self.blocking):
                    await refresh_slots(client)  # type: ignore[arg-type]
            raise mapped from exc

    async def _run(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run one command (or a few) under the timeout and error mapping of `_guard`."""
        async with self._guard():
            return await fn()

    async def ping(self) -> None:
        """Raise `BrokerUnavailable` unless Redis answers PING within the timeout."""
        await self._run(self.client.ping)

    async def check_server(self) -> None:
        """Refuse a Redis older than 6.2 or one that may evict keys; load the scripts.

        On a cluster every primary is checked. The shard count is recorded on first use:
        task ids map to shards by it, so changing it later would hide existing tasks.
        """
        if self.cluster:
            # Learn the slot map before any concurrent use: redis-py's cluster client races
            # (and closes connections in use) when its first commands run concurrently.
            for client in (self.client, self.blocking):
                await self._run(client.initialize)
        versions = []
        for info in per_node(await self._run(lambda: self.client.info("server"))):
            version = str(info.get("redis_version", "0"))
            versions.append(tuple(int(p) for p in version.split(".")[:2]))
            if versions[-1] < (6, 2):
                raise ConfigurationError(f"Redis {version} is too old: Spillway needs >= 6.2")
        self.scripts.use_flags(min(versions) >= (7, 0))
        await self._measure_clock()
        if self.settings.check_eviction_policy:
            for info in per_node(await self._run(lambda: self.client.info("memory"))):
                policy = str(info.get("maxmemory_policy", "noeviction"))
                if policy != "noeviction":
                    raise EvictionPolicyError(policy)
        await self._run(lambda: self.scripts.load(self.client))
        meta = self.keys.meta
        with contextlib.suppress(BrokerUnavailable):  # a full Redis: compare with what is there
            await self._run(lambda: self.client.hsetnx(meta, "shards", self.settings.shards))
        recorded = int(
            await self._run(lambda: self.client.hget(meta, "shards")) or self.settings.shards
        )
        if recorded != self.settings.shards:
            raise ConfigurationError(
                f"SPILLWAY_SHARDS is {self.settings.shards} but the data under prefix "
                f"{self.settings.prefix!r} was written with {recorded} shards; use {recorded}, "
                "or a new SPILLWAY_PREFIX"
            )

    async def _measure_clock(self) -> None:
        """How far the Redis server's clock is ahead of ours (ms), for accept deadlines."""
        before = time.time()
        seconds, micros = await self._run(self.client.time)
        after = time.time()
        self._clock_offset_ms = (int(seconds) + int(micros) / 1e6 - (before + after) / 2) * 1000

    # --- accept ------------------------------------------------------------------------------

    async def accept(self, request: AcceptRequest) -> AcceptReply:
        """Write one task. Concurrent callers are coalesced into one pipeline round trip.

        Each caller waits at most its own budget from the moment it called, even when its
        batch is queued behind a stuck one; past that it gets `BrokerUnavailable`, and the
        accept script refuses the batch if Redis runs it after the caller's deadline, so that
        refusal means nothing was written. Only a connection that breaks after the batch was
        sent leaves the outcome unknown: `OutcomeUnknown`, naming the task.
        """
        return await self.accept_soon(request)

    def accept_soon(self, request: AcceptRequest) -> asyncio.Future[AcceptReply]:
        """`accept` without a coroutine: the future of its reply (for the API's direct routes)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AcceptReply] = loop.create_future()
        queue = self._accept_queue
        if not queue:
            # The first caller of a batch sets its deadline and one timer for all of it. Those
            # after it called later, so each is still held to at most its own budget. (A timer
            # per caller, with its cancellation, was ~2 us of every request.)
            budget = self.settings.redis_timeout * 2
            self._accept_deadline = self._deadline_ms(budget)
            self._accept_batch = batch = self._batch(replicated=True)
            self._accept_timer = loop.call_later(budget, _give_up, queue, batch, budget)
        queue.append((request, future))
        if self._accept_flusher is None or self._accept_flusher.done():
            self._accept_flusher = asyncio.create_task(self._flush_accepts())
        return future

    def _deadline_ms(self, budget: float) -> int:
        """Half of `budget` seconds from now, on the Redis server's clock (ms).

        The other half is the reply's: a script that runs just before the deadline must still
        have its reply read before the caller gives up, or the caller answers 503 for a task
        that was written. With a tenth of the budget (100 ms) as the margin, that happened in
        CI when the API's loop was slow just after Redis came back from a freeze (finding 13
        of docs/reliability.md).
        """
        return int((time.time() + budget / 2) * 1000 + self._clock_offset_ms)

    async def _flush_accepts(self) -> None:
        while self._accept_queue:
            batch, self._accept_queue = self._accept_queue, []
            deadline, timer, wire = self._accept_deadline, self._accept_timer, self._accept_batch
            try:
                replies = await self.accept_many([r for r, _ in batch], deadline, wire)
            except BaseException as exc:  # every waiter must hear of the failure
                for request, future in batch:
                    if not future.done():
                        if isinstance(exc, OutcomeUnknown):  # each names the task it may be
                            future.set_exception(exc.naming(request.task_id))
                        else:
                            future.set_exception(exc)
                        future.exception()  # its caller may have timed out: no "never retrieved"
                if not isinstance(exc, Exception):
                    raise
                continue
            finally:
                if timer is not None:
                    timer.cancel()
            given_up = []
            for (_, future), reply in zip(batch, replies, strict=True):
                if not future.done():
                    future.set_result(reply)
                elif reply.status == "ok" and not future.cancelled() and future.exception():
                    given_up.append(reply.task_id)
            if given_up:
                # Their callers were told the outcome is unknown; now it is known, so say it.
                log.warning(
                    "Redis wrote %d task(s) whose callers were answered 503 (outcome unknown) "
                    "before its reply was read: %s",
                    len(given_up), ", ".join(given_up[:10]),
                )  # fmt: skip

    async def accept_many(
        self,
        requests: Sequence[AcceptRequest],
        deadline: int | None = None,
        batch: Batch | None = None,
    ) -> list[AcceptReply]:
        """Write many tasks in one round trip; each is accepted or refused on its own.

        One accept script call per shard and queue (its keys share a slot), all in one
        pipeline. `deadline` (Redis clock, ms) is when the callers give up: past it nothing is
        written.
        """
        limit = max(1, -(-self.settings.backlog_limit // self.settings.shards))
        shards = self.settings.shards
        groups: dict[tuple[int, str], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((shard_of(r.task_id, shards), r.queue), []).append(i)

        # The callers give up at their deadline, or when the reply takes longer than the socket
        # timeout from now, whichever comes first.
        script_deadline = self._deadline_ms(self.settings.redis_timeout)
        if deadline is not None:
            script_deadline = min(script_deadline, deadline)

        policies = self._policies
        if len(policies) > 256:  # per-request overrides: keep the cache small
            policies.clear()

        def build(pipe: Batch) -> None:
            for (k, queue), idx in groups.items():
                shard = self.keys.shard(k)
                records: list[str] = []
                idems: list[str] = []
                args: list[Any] = [limit, self._idempotency_ttl_ms, script_deadline, queue]
                for i in idx:
                    r = requests[i]
                    records.append(shard.task(r.task_id))
                    if r.idempotency_key:
                        idems.append(shard.idempotency(r.idempotency_key))
                    args += (
                        r.task_id, r.type, r.payload, r.delay_ms,
                        policies.get((r.max_retries, r.timeout, r.retry_base, r.retry_cap))
                        or _policy(policies, r),
                        r.fingerprint if r.idempotency_key else "",
                    )  # fmt: skip
                keys = [shard.stream(queue), shard.due(queue), *records, *idems]
                self.scripts.queue(pipe, "accept", keys, args)

        replies: list[AcceptReply | None] = [None] * len(requests)
        written = await self._pipeline(build, replicated=True, batch=batch)
        for idx, items in zip(groups.values(), written, strict=True):
            if items == "late":
                # Only this group: one that Redis ran before it, still in time, was written.
                for i in idx:
                    replies[i] = AcceptReply("late", "")
                continue
            for i, item in zip(idx, items, strict=True):
                if item == 1:
                    replies[i] = AcceptReply("ok", requests[i].task_id)
                else:
                    status, _, value = str(item).partition("|")
                    if status == "full":
                        replies[i] = AcceptReply("full", "", backlog=int(value))
                    else:
                        replies[i] = AcceptReply(status, value)
        return [r for r in replies if r is not None]

    def _batch(self, *, replicated: bool = False) -> Batch:
        """An empty batch; with `replicated` and SPILLWAY_WAIT_REPLICAS set, it ends in a WAIT."""
        s = self.settings
        return Batch(s.wait_replicas, int(s.wait_timeout * 1000)) if replicated else Batch()

    async def _pipeline(
        self,
        build: Callable[[Batch], None],
        *,
        replicated: bool = False,
        batch: Batch | None = None,
    ) -> list[Any]:
        """Run a batch of script calls in one round trip; reload scripts once if Redis lost them.

        Error replies are raised (the first one) after every reply has been read. With
        `replicated` and SPILLWAY_WAIT_REPLICAS set, the batch is followed by a WAIT. A
        failure after the batch was sent (a timeout, a broken connection) is `OutcomeUnknown`:
        Redis may have run it and been stopped before its replies came back.
        """
        batch = batch or self._batch(replicated=replicated)
        build(batch)
        try:
            async with self._guard():
                replies = await self._sender.send(batch)
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:  # a restarted or flushed Redis: those did nothing, so resend them
                    await self.scripts.load(self.client)
                    resent = await self._sender.send(batch, missing)
                    for i, r in zip(missing, resent, strict=True):
                        replies[i] = r
        except BrokerUnavailable as exc:
            if batch.sent and not isinstance(exc, OutcomeUnknown):
                raise OutcomeUnknown(f"{exc} (after the commands were sent)") from exc
            raise
        for r in replies:
            if isinstance(r, ResponseError):
                mapped = unavailable(r)
                raise mapped or r
        return replies

    # --- read side ---------------------------------------------------------------------------

    async def get(self, task_id: str) -> dict[str, str] | None:
        """The raw task record, or None if no task has this id (or it expired)."""
        key = self.keys.for_task(task_id).task(task_id)
        record: dict[str, str] = await self._run(lambda: self.client.hgetall(key))
        return record or None

    async def _terminal_status(self, task_id: str) -> str | None:
        key = self.keys.for_task(task_id).task(task_id)
        status: str | None = await self._run(lambda: self.client.hget(key, "status"))
        return status

    async def wait(self, task_id: str, timeout: float) -> bool:
        """Wait until the task is terminal (True) or `timeout` seconds pass (False)."""
        shard = self.keys.for_task(task_id)
        return await self.waiters.wait(task_id, shard.channel(task_id), timeout)

    async def cancel(self, task_id: str) -> tuple[str, str | None]:
        """Cancel a waiting task: ('cancelled', None), ('missing', None) or ('refused', status)."""
        shard = self.keys.for_task(task_id)
        queue: str | None = await self._run(lambda: self.client.hget(shard.task(task_id), "queue"))
        if queue is None:
            return "missing", None
        keys = [shard.task(task_id), shard.stream(queue), shard.due(queue)]
        args = [task_id, GROUP, self.result_ttl_ms, shard.channel(task_id)]
        reply = await self._run(lambda: self.scripts.call(self.client, "cancel", keys, args))
        return str(reply[0]), (str(reply[1]) if len(reply) > 1 else None)

    # --- worker side -------------------------------------------------------------------------

    async def register_queues(self, queues: Sequence[str]) -> None:
        """Record the queue names and create each shard stream's consumer group if missing."""

        def build(pipe: Any) -> None:
            pipe.sadd(self.keys.queues, *queues)
            for shard in self.keys.all_shards():
                for q in queues:
                    # From id 0, not $: entries written before the group existed are delivered.
                    pipe.xgroup_create(shard.stream(q), GROUP, id="0", mkstream=True)

        async with self._guard(), self.client.pipeline(transaction=False) as pipe:
            build(pipe)
            results = await pipe.execute(raise_on_error=False)
        for r in results:
            if isinstance(r, OutOfMemoryError):
                # A full Redis: groups that exist keep working, and a missing one is created
                # on the first read after memory frees up (NOGROUP brings us back here).
                log.warning("Redis is full (maxmemory): consumer groups not checked")
                return
            if isinstance(r, Exception) and "BUSYGROUP" not in str(r):
                mapped = unavailable(r)
                raise mapped or r

    def streams(self, queues: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Every shard stream of these queues -> (queue, shard)."""
        return {s.stream(q): (q, s.shard) for s in self.keys.all_shards() for q in queues}

    async def read(
        self, consumer: str, streams: dict[str, tuple[str, int]], count: int, block_ms: int | None
    ) -> list[Delivery]:
        """New entries for this consumer (XREADGROUP >), waiting up to `block_ms`."""
        wait = (block_ms or 0) / 1000 + self.settings.redis_timeout * 2
        try:
            async with self._guard(wait):
                client = self.blocking if block_ms else self.client
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
                await self.register_queues(sorted({q for q, _ in streams.values()}))
                return []
            raise
        out: list[Delivery] = []
        for stream, entries in stream_items(reply):
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
        keys = self.keys.shard(shard)
        stream = keys.stream(queue)
        raw = orjson.dumps(fields or {}, default=str).decode()
        async with self._guard(), self.client.pipeline(transaction=True) as pipe:
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
        stream = self.keys.shard(shard).stream(queue)
        try:
            reply = await self._run(
                lambda: self.client.xautoclaim(
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

    async def begin(self, deliveries: Sequence[Delivery]) -> list[Started | None]:
        """Mark deliveries running and count their attempts; None for skipped or dead-lettered."""
        by_stream: dict[tuple[str, int], list[int]] = {}
        for i, d in enumerate(deliveries):
            by_stream.setdefault((d.queue, d.shard), []).append(i)

        def build(pipe: Batch) -> None:
            for (queue, k), idx in by_stream.items():
                shard = self.keys.shard(k)
                keys = [shard.stream(queue), shard.dead(queue), shard.counters]
                keys += [shard.task(deliveries[i].task_id) for i in idx]
                args: list[Any] = [GROUP, self.result_ttl_ms, shard.channel_prefix]
                args += [deliveries[i].entry_id for i in idx]
                self.scripts.queue(pipe, "begin", keys, args)

        replies = await self._pipeline(build)
        out: list[Started | None] = [None] * len(deliveries)
        for idx, items in zip(by_stream.values(), replies, strict=True):
            for i, item in zip(idx, items, strict=True):
                if item[0] == "run":
                    max_retries, timeout, retry_base, retry_cap = str(item[4]).split("|")
                    out[i] = Started(
                        delivery=deliveries[i],
                        type=item[1],
                        payload=item[2],
                        attempts=int(item[3]),
                        max_retries=int(max_retries),
                        timeout=float(timeout),
                        retry_base=as_float(retry_base),
                        retry_cap=as_float(retry_cap),
                        created_at_ms=as_int(item[5]),
                    )
        return out

    async def finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Write each outcome once (a stale delivery writes nothing), ack and delete its entry."""

        def build(pipe: Batch) -> None:
            for o in outcomes:
                d = o.delivery
                shard = self.keys.shard(d.shard)
                keys = [shard.task(d.task_id), shard.stream(d.queue), shard.due(d.queue),
                        shard.dead(d.queue), shard.counters]  # fmt: skip
                args = [d.task_id, d.entry_id, GROUP, o.kind, o.value, o.traceback,
                        self.result_ttl_ms, o.retry_delay_ms, shard.channel(d.task_id),
                        o.attempts]  # fmt: skip
                self.scripts.queue(pipe, "finish", keys, args)

        return [bool(r) for r in await self._pipeline(build)]

    async def renew(self, consumer: str, deliveries: Sequence[Delivery]) -> int:
        """Reset the idle time of deliveries this consumer still runs (claim renewal)."""
        return await self._per_stream("renew", consumer, deliveries, [])

    async def release(self, consumer: str, deliveries: Sequence[Delivery]) -> int:
        """Make deliveries this consumer will not finish reclaimable at once (shutdown)."""
        idle = ms(self.settings.visibility_timeout) + 1000
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
                keys = [self.keys.shard(k).stream(queue)]
                self.scripts.queue(pipe, script, keys, [GROUP, consumer, *extra, *ids])

        return sum(int(n) for n in await self._pipeline(build))

    async def promote_due(self, queues: Sequence[str], limit: int = 1000) -> int:
        """Move delayed and retry-waiting tasks whose time has come into their streams."""
        pairs = [(s, q) for s in self.keys.all_shards() for q in queues]

        def ask(pipe: Batch) -> None:
            for s, q in pairs:
                self.scripts.queue(pipe, "due", [s.due(q)], [limit])

        due_lists = await self._pipeline(ask)
        work = [(s, q, ids) for (s, q), ids in zip(pairs, due_lists, strict=True) if ids]
        if not work:
            return 0

        def promote(pipe: Batch) -> None:
            for s, q, ids in work:
                keys = [s.due(q), s.stream(q), *(s.task(i) for i in ids)]
                self.scripts.queue(pipe, "promote", keys, list(ids))

        return sum(int(n) for n in await self._pipeline(promote))

    async def backlog(self, queues: Sequence[str]) -> int:
        """Entries in the streams plus tasks in the due sets: zero means fully drained."""
        pairs = [(s, q) for s in self.keys.all_shards() for q in queues]

        async def run() -> int:
            async with self.client.pipeline(transaction=False) as pipe:
                for s, q in pairs:
                    pipe.xlen(s.stream(q))
                    pipe.zcard(s.due(q))
                return sum(int(n) for n in await pipe.execute())

        result: int = await self._run(run)
        return result


def _policy(known: dict[tuple[int, float, float, float], str], r: AcceptRequest) -> str:
    """The record's policy field, 'max_retries|timeout|retry_base|retry_cap', kept in `known`."""
    key = (r.max_retries, r.timeout, r.retry_base, r.retry_cap)
    text = known[key] = f"{r.max_retries}|{r.timeout}|{r.retry_base}|{r.retry_cap}"
    return text


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
