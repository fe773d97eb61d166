"""`RedisCore`: the clients, scripts, key names and error mapping every part of the broker shares.

The accept writer (`spillway.broker.accept`), the worker's operations (`spillway.broker.work`)
and the readers and operators (`spillway.broker.admin`) each hold one core and send every
command through it: `run` for a few plain commands, `pipeline` for batches of script calls.
Either bounds the call in time and turns "Redis is down or refusing" into `BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from spillway.broker.batch import Batch
from spillway.broker.connection import AnyRedis, make_client
from spillway.broker.keys import GROUP, Keys
from spillway.broker.redispy_wire import refresh_slots
from spillway.broker.scripts import Scripts
from spillway.broker.senders import make_sender
from spillway.broker.types import ms, per_node, unavailable
from spillway.errors import (
    BrokerUnavailable,
    ConfigurationError,
    EvictionPolicyError,
    OutcomeUnknown,
)
from spillway.settings import Settings

__all__ = ["RedisCore"]

log = logging.getLogger("spillway.broker")


class RedisCore:
    """Owns the Redis clients and scripts; checks the server once before the first use."""

    def __init__(self, settings: Settings, queues: Callable[[], Sequence[str]]) -> None:
        if not settings.redis_url:
            raise ConfigurationError(
                "SPILLWAY_REDIS_URL is not set. Point it at a Redis >= 6.2, "
                "or run `spillway dev`, which starts an embedded server."
            )
        self.settings = settings
        self.queues = queues  # the application's queues, registered by `ready`
        self.keys = Keys(settings.prefix, settings.shards)
        self.scripts = Scripts()
        self.result_ttl_ms = ms(settings.result_ttl)
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
        # On a cluster a burst of new connections to one node overflows its accept backlog.
        self._gate: asyncio.Semaphore | contextlib.nullcontext[None] = (
            asyncio.Semaphore(64) if self.cluster else contextlib.nullcontext()
        )
        self._clock_offset_ms = 0.0
        self._checked = False
        self._checking: asyncio.Lock | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        """Whether `ready` has checked the server."""
        return self._checked

    async def ready(self) -> None:
        """Check the server and create the consumer groups, once (see `check_server`)."""
        if self._checked:
            return
        if self._checking is None:
            self._checking = asyncio.Lock()
        async with self._checking:
            if not self._checked:
                await self.check_server()
                await self.register_queues(self.queues())
                self._checked = True

    async def close(self) -> None:
        await self._sender.close()
        for client in (self.client, self.blocking):
            if isinstance(client, Redis):
                # The pool was passed in explicitly, so the client would not close it by itself.
                await client.aclose(close_connection_pool=True)
            else:
                await client.aclose()

    # --- calls -------------------------------------------------------------------------------

    @asynccontextmanager
    async def guard(self, timeout: float | None = None) -> AsyncIterator[None]:
        """Bound a call in time and turn "Redis is down or refusing" into `BrokerUnavailable`.

        Bugs (any other error) pass through. On a cluster, calls also wait for one of a bounded
        number of slots.
        """
        try:
            async with asyncio.timeout(timeout or self.settings.redis_timeout * 2), self._gate:
                yield
        except NoScriptError:
            raise
        except (
            RedisError, RedisClusterException, OSError, TimeoutError, AttributeError, TypeError,
            RuntimeError,
        ) as exc:  # fmt: skip
            mapped = unavailable(exc)
            if mapped is None:
                raise
            if (
                self.cluster
                and self.settings.fast_path
                and (not isinstance(exc, ResponseError) or isinstance(exc, ClusterDownError))
            ):
                # A node unreachable or the cluster down: perhaps a failover, so learn the new
                # slot map before the caller tries again (not for a full or busy node). Only
                # on the fast path (redis-py's private names); on the stock path redis-py
                # reloads the map itself after a connection error or a MOVED.
                for client in (self.client, self.blocking):
                    await refresh_slots(client)  # type: ignore[arg-type]
            raise mapped from exc

    async def run(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run one command (or a few) under the timeout and error mapping of `guard`."""
        async with self.guard():
            return await fn()

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script under `guard`."""
        return await self.run(lambda: self.scripts.call(self.client, name, keys, args))

    def batch(self, *, replicated: bool = False) -> Batch:
        """An empty batch; with `replicated` and SPILLWAY_WAIT_REPLICAS set, it ends in a WAIT."""
        s = self.settings
        return Batch(s.wait_replicas, int(s.wait_timeout * 1000)) if replicated else Batch()

    async def pipeline(
        self,
        build: Callable[[Batch], None],
        *,
        replicated: bool = False,
        batch: Batch | None = None,
    ) -> list[Any]:
        """Run a batch of script calls in one round trip; reload scripts once if Redis lost them.

        Error replies are raised (the first one) after every reply has been read. A failure
        after the batch was sent (a timeout, a broken connection) is `OutcomeUnknown`: Redis
        may have run it and been stopped before its replies came back.
        """
        batch = batch or self.batch(replicated=replicated)
        build(batch)
        try:
            async with self.guard():
                replies = await self._send(batch)
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:  # a restarted or flushed Redis: those did nothing, so resend them
                    await self.scripts.load(self.client)
                    resent = await self._send(batch, missing)
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

    async def _send(self, batch: Batch, only: list[int] | None = None) -> list[Any]:
        return await self._sender.send(batch, only)

    # --- the server --------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise `BrokerUnavailable` unless Redis answers PING within the timeout."""
        await self.run(self.client.ping)

    async def check_server(self) -> None:
        """Refuse a Redis older than 6.2 or one that may evict keys; load the scripts.

        On a cluster every primary is checked. The shard count is recorded on first use:
        task ids map to shards by it, so changing it later would hide existing tasks.
        """
        if self.cluster:
            # Learn the slot map before any concurrent use: redis-py's cluster client races
            # (and closes connections in use) when its first commands run concurrently.
            for client in (self.client, self.blocking):
                await self.run(client.initialize)
        versions = []
        for info in per_node(await self.run(lambda: self.client.info("server"))):
            version = str(info.get("redis_version", "0"))
            versions.append(tuple(int(p) for p in version.split(".")[:2]))
            if versions[-1] < (6, 2):
                raise ConfigurationError(f"Redis {version} is too old: Spillway needs >= 6.2")
        self.scripts.use_flags(min(versions) >= (7, 0))
        await self._measure_clock()
        if self.settings.check_eviction_policy:
            for info in per_node(await self.run(lambda: self.client.info("memory"))):
                policy = str(info.get("maxmemory_policy", "noeviction"))
                if policy != "noeviction":
                    raise EvictionPolicyError(policy)
        await self.run(lambda: self.scripts.load(self.client))
        meta = self.keys.meta
        with contextlib.suppress(BrokerUnavailable):  # a full Redis: compare with what is there
            await self.run(lambda: self.client.hsetnx(meta, "shards", self.settings.shards))
        recorded = int(
            await self.run(lambda: self.client.hget(meta, "shards")) or self.settings.shards
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
        seconds, micros = await self.run(self.client.time)
        after = time.time()
        self._clock_offset_ms = (int(seconds) + int(micros) / 1e6 - (before + after) / 2) * 1000

    def deadline_ms(self, budget: float) -> int:
        """Half of `budget` seconds from now, on the Redis server's clock (ms).

        A script that finds its deadline passed writes nothing. The other half of the budget is
        the reply's: a script that runs just before the deadline must still have its reply read
        before the caller gives up, or the caller answers 503 for a task that was written
        (finding 13 of docs/reliability.md).
        """
        return int((time.time() + budget / 2) * 1000 + self._clock_offset_ms)

    async def register_queues(self, queues: Sequence[str]) -> None:
        """Record the queue names and create each shard stream's consumer group if missing."""
        async with self.guard(), self.client.pipeline(transaction=False) as pipe:
            pipe.sadd(self.keys.queues, *queues)
            for shard in self.keys.all_shards():
                for q in queues:
                    # From id 0, not $: entries written before the group existed are delivered.
                    pipe.xgroup_create(shard.stream(q), GROUP, id="0", mkstream=True)
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
