"""`make_sender`: the fast senders when redis-py has what they use, else its public pipelines.

The stock senders here use only redis-py's public API and keep the contract of
`spillway.broker.batch`. What decides `batch.sent` on them:

* a single server: a connection is taken from the pool (and connected, AUTH and all) and given
  back before the pipeline runs; if that fails, nothing was written. Past it, the pipeline may
  have written, whatever fails (it could take another pooled connection: conservative).
* a cluster: the pipeline connects to several nodes inside one call, so `sent` is set before
  it runs: any failure is an unknown outcome. redis-py's cluster pipeline resends a batch
  after a connection error (the client's retry policy), as it does for any command.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterError, ResponseError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeout

from spillway.broker import redispy_wire
from spillway.broker.batch import Batch, Sender
from spillway.broker.connection import AnyRedis
from spillway.broker.redispy_wire import ClusterSender, PipeSender, cluster_ready, version

__all__ = ["StockClusterSender", "StockSender", "make_sender"]

log = logging.getLogger("spillway.broker")


def make_sender(client: AnyRedis, timeout: float, *, fast: bool) -> Sender:
    """The sender for `client`'s script batches; each round trip is bounded by `timeout`.

    With `fast` (SPILLWAY_FAST_PATH), the fast one if `redispy_wire.probe` passes; otherwise,
    or if it fails (one warning naming the version and the reason), redis-py's pipelines.
    """
    stock: Sender = (
        StockSender(client, timeout)
        if isinstance(client, Redis)
        else StockClusterSender(client, timeout)
    )
    if not fast:
        log.info("script batches go through redis-py's pipelines: SPILLWAY_FAST_PATH is off")
        return stock
    problem = redispy_wire.probe(redispy_wire.NEEDS)
    if problem is None and isinstance(client, RedisCluster):
        problem = cluster_ready(client)
    if problem is not None:
        log.warning(
            "redis-py %s: %s; script batches go through its public pipelines", version(), problem
        )
        return stock
    if isinstance(client, Redis):
        return PipeSender(client, timeout, fallback=stock)
    return ClusterSender(client)


def _settled(replies: list[Any]) -> list[Any]:
    """The cluster pipeline's replies as the contract has them: a lost connection or a timeout
    in place of a reply is raised (the outcome is unknown); redirects redis-py gave up
    following (a `ClusterError`, a slot migrating) become the `TryAgainError` they were, as
    the command never ran."""
    out: list[Any] = []
    for reply in replies:
        if isinstance(reply, ClusterError):
            reply = TryAgainError(f"redirects not settled: {reply}")
        elif isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
            raise reply
        out.append(reply)
    return out


class StockSender:
    """Batches to a single server through redis-py's pipeline (no MULTI): one pooled
    connection, one write, the replies read in order."""

    def __init__(self, client: Redis, timeout: float) -> None:
        self.client = client
        self.timeout = timeout

    async def send(self, batch: Batch, only: list[int] | None = None) -> list[Any]:
        indices = batch.indices(only)
        if not indices:
            return []
        pipe = self.client.pipeline(transaction=False)
        for i in indices:
            pipe.execute_command(*batch.commands[i])
        if batch.wait:
            pipe.execute_command(*batch.wait)
        pool = self.client.connection_pool
        try:
            async with asyncio.timeout(self.timeout):
                # The pool connects (or checks a pooled connection); if Redis refuses or does
                # not answer, the batch was not written.
                await pool.release(await pool.get_connection())  # type: ignore[no-untyped-call]
                batch.sent = True
                replies = await pipe.execute(raise_on_error=False)
        except TimeoutError as exc:  # asyncio.timeout's (redis-py's is not a subclass)
            raise RedisTimeout(f"Redis did not answer a batch within {self.timeout:g} s") from exc
        return batch.strip_wait(list(replies))

    async def close(self) -> None:
        """Nothing of its own: the connections are the client's pool's."""


class StockClusterSender:
    """Batches to a cluster through redis-py's cluster pipeline, which routes each command by
    its keys (one write per node) and follows redirects. A WAIT goes to each node written to,
    after its commands on the same connection (a redirected command is resent alone)."""

    def __init__(self, cluster: RedisCluster, timeout: float) -> None:
        self.cluster = cluster
        self.timeout = timeout

    async def send(self, batch: Batch, only: list[int] | None = None) -> list[Any]:
        indices = batch.indices(only)
        if not indices:
            return []
        pipe = self.cluster.pipeline()
        for i in indices:
            pipe.execute_command(*batch.commands[i])
        nodes: dict[str, ClusterNode] = {}
        if batch.wait:
            for i in indices:
                node = self.cluster.get_node_from_key(batch.first_key(i))
                if node is not None:
                    nodes.setdefault(node.name, node)
            for node in nodes.values():
                pipe.execute_command(*batch.wait, target_nodes=node)
        batch.sent = True
        try:
            async with asyncio.timeout(self.timeout):
                replies = list(await pipe.execute(raise_on_error=False))
        except TimeoutError as exc:
            raise RedisTimeout(f"Redis did not answer a batch within {self.timeout:g} s") from exc
        replies = _settled(replies)
        commands, waits = replies[: len(indices)], replies[len(indices) :]
        for acked in waits:  # each node's WAIT is checked (and logged if short)
            batch.strip_wait([acked])
        return commands

    async def close(self) -> None:
        """Nothing of its own: the connections are the cluster client's."""
