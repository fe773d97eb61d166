"""Send a batch of commands in one round trip (one per node on a cluster), packed by hand.

For batches of thousands of script calls, redis-py's generic command packer was most of the
cost of an enqueue (it type-checks and encodes every argument through several layers); this
packs each command with hiredis's C encoder, sends it as soon as it is packed (so Redis runs
one call while the next is encoded) and reads the replies in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import (
    AskError,
    ConnectionError,
    MovedError,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

__all__ = ["Batch", "pack", "refresh_slots"]

_REDIRECTS = 3

log = logging.getLogger("spillway.broker")


def pack(args: list[Any]) -> bytes:
    """One command in RESP: an array of bulk strings (hiredis's C encoder)."""
    packed: bytes = hiredis.pack_command(tuple(args))
    return packed


_last_refresh: dict[int, float] = {}


async def refresh_slots(cluster: RedisCluster) -> None:
    """Reload the cluster's slot map, at most twice a second per client."""
    now = asyncio.get_running_loop().time()
    if now - _last_refresh.get(id(cluster), 0.0) < 0.5:
        return
    _last_refresh[id(cluster)] = now
    with contextlib.suppress(RedisError, OSError):
        await cluster.nodes_manager.initialize()


def _first_key(command: list[Any]) -> str:
    return str(command[3] if command[0] == "EVALSHA" else command[1])


async def _exchange(
    conn: AbstractConnection, commands: list[list[Any]], wait: list[Any] | None = None
) -> list[Any]:
    """Write the commands, read one reply each. Error replies come back as exception objects.

    With `wait` (a WAIT command), it follows the commands on the same connection, so its
    reply says how many replicas have received them; that reply is checked, not returned.
    """
    sent = [*commands, wait] if wait else commands
    try:
        await conn.send_packed_command(b"".join(pack(c) for c in sent), check_health=False)
        replies: list[Any] = []
        for _ in sent:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # the connection is still in step: keep reading
                replies.append(exc)
        if wait:
            acked = replies.pop()
            if not isinstance(acked, int) or acked < int(wait[1]):
                log.warning("WAIT: %s of %s replicas acknowledged the batch", acked, wait[1])
        return replies
    except BaseException:
        # Cancelled or broken mid-batch: the connection's state is unknown, drop it.
        await conn.disconnect(nowait=True)
        raise


class Batch:
    """Commands collected for one round trip."""

    def __init__(self, wait_replicas: int = 0, wait_ms: int = 0) -> None:
        self.commands: list[list[Any]] = []
        # WAIT for this many replicas after the batch (0: answer as soon as the primary has it).
        self.wait = ["WAIT", wait_replicas, wait_ms] if wait_replicas else None

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append(["EVALSHA", sha, numkeys, *keys_and_args])

    async def send(self, client: Redis | RedisCluster, only: list[int] | None = None) -> list[Any]:
        """Send the commands (or those at the indices `only`) and read their replies."""
        indices = list(range(len(self.commands))) if only is None else only
        if not indices:
            return []
        if isinstance(client, Redis):
            pool = client.connection_pool
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                return await _exchange(conn, [self.commands[i] for i in indices], self.wait)
            finally:
                await pool.release(conn)
        return await self._send_cluster(client, indices)

    async def _send_cluster(self, cluster: RedisCluster, indices: list[int]) -> list[Any]:
        """Route each command to the node owning its key's slot; follow MOVED/ASK redirects.

        A redirected command was not executed, so resending it is safe.
        """
        replies: dict[int, Any] = {}
        todo = indices
        for attempt in range(_REDIRECTS + 1):
            by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
            for i in todo:
                slot = cluster.keyslot(_first_key(self.commands[i]))
                node = cluster.nodes_manager.get_node_from_slot(slot)
                by_node.setdefault(node.name, (node, []))[1].append(i)
            try:
                results = await asyncio.gather(
                    *(self._send_node(node, idx) for node, idx in by_node.values())
                )
            except (ConnectionError, TimeoutError, OSError):
                # A node is gone (failover): learn the new slot map for the next call. What this
                # call did is unknown, so it is not resent here; the caller decides.
                await refresh_slots(cluster)
                raise
            for (_, idx), got in zip(by_node.values(), results, strict=True):
                replies.update(zip(idx, got, strict=True))
            asked = [i for i in todo if isinstance(replies[i], AskError)]
            if asked:
                await self._send_asking(cluster, asked, replies)
            redirected = [
                i for i in todo if isinstance(replies[i], MovedError | AskError | TryAgainError)
            ]
            if not redirected or attempt == _REDIRECTS:
                break
            if any(isinstance(replies[i], MovedError) for i in redirected):
                # The slot map changed (failover, end of a resharding): learn the new one.
                await cluster.nodes_manager.initialize()
            else:
                # TRYAGAIN: a script's keys are split between two nodes while their slot
                # migrates; the next key to move may complete them.
                await asyncio.sleep(0.05)
            todo = redirected
        return [replies[i] for i in indices]

    async def _send_asking(
        self, cluster: RedisCluster, indices: list[int], replies: dict[int, Any]
    ) -> None:
        """Resend ASK-redirected commands to the node importing their slot, each after ASKING.

        While a slot migrates, the keys already moved live on the importing node, which takes
        a command about them only when ASKING precedes it; the slot map stays as it is.
        """
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i in indices:
            error: AskError = replies[i]
            node = cluster.get_node(host=error.host, port=error.port)
            if node is not None:
                by_node.setdefault(node.name, (node, []))[1].append(i)
        for node, idx in by_node.values():
            conn = node.acquire_connection()
            try:
                sent = [c for i in idx for c in (["ASKING"], self.commands[i])]
                got = await _exchange(conn, sent, self.wait)
            finally:
                node.release(conn)
            replies.update(zip(idx, got[1::2], strict=True))

    async def _send_node(self, node: ClusterNode, indices: list[int]) -> list[Any]:
        conn = node.acquire_connection()
        try:
            return await _exchange(conn, [self.commands[i] for i in indices], self.wait)
        finally:
            node.release(conn)
