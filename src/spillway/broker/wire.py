"""Send a batch of commands in one round trip (one per node on a cluster), packed by hand.

For batches of thousands of script calls, redis-py's generic command packer was most of the
cost of an enqueue (it type-checks and encodes every argument through several layers); this
packs the commands with hiredis's C encoder and reads the replies in order.

For a single server the batches go over `Pipes`: connections that redis-py opens (TLS, AUTH,
SELECT and the client name are its job) and then hands over, whose replies a hiredis Reader
parses straight from the socket's data. Small batches are the common case under HTTP load
(7 to 10 requests each at 64 connections), and there redis-py's machinery around each call
(taking and returning a pool connection, a timeout scope per read, the stream reader) cost
more than the batch itself: ~47 us of Python per task at 8 tasks a batch, ~38 us over a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
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

__all__ = ["Batch", "Pipes", "pack", "refresh_slots"]

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
        return _waited(replies, wait)
    except BaseException:
        # Cancelled or broken mid-batch: the connection's state is unknown, drop it.
        await conn.disconnect(nowait=True)
        raise


def _waited(replies: list[Any], wait: list[Any] | None) -> list[Any]:
    """The replies without the WAIT's, which is checked: too few replicas is logged."""
    if wait:
        acked = replies.pop()
        if not isinstance(acked, int) or acked < int(wait[1]):
            log.warning("WAIT: %s of %s replicas acknowledged the batch", acked, wait[1])
    return replies


class _Pipe(asyncio.Protocol):
    """One connection taken over from redis-py: a batch written at once, its replies parsed
    by hiredis as they arrive and handed over when the last one is in.

    One batch at a time: the `Pipes` that owns it lends it to one caller and drops it (closes
    it) when a batch fails, times out or is cancelled, as the connection's state is unknown.
    """

    def __init__(
        self, conn: AbstractConnection, transport: asyncio.Transport, stream: tuple[object, ...]
    ) -> None:
        encoder = conn.encoder
        options: dict[str, Any] = {"replyError": BaseParser.parse_error}  # e.g. NoScriptError
        if encoder.decode_responses:
            options |= {"encoding": encoder.encoding, "errors": encoder.encoding_errors}
        self.reader = hiredis.Reader(**options)
        self.transport = transport
        self.where = conn._host_error()  # host:port, or the socket's path
        self.closed = False
        # The stream's objects, kept: collecting the writer would close the transport.
        self.stream = stream
        self._future: asyncio.Future[list[Any]] | None = None
        self._replies: list[Any] = []
        self._expected = 0

    def exchange(self, data: bytes, replies: int) -> asyncio.Future[list[Any]]:
        """Write one batch; the future gets its `replies` replies (errors as exceptions)."""
        loop = asyncio.get_running_loop()
        self._future = future = loop.create_future()
        self._replies, self._expected = [], replies
        self.transport.write(data)
        return future

    def close(self) -> None:
        self.closed = True
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if self._future is None:
                    raise hiredis.ProtocolError(f"a reply nobody asked for: {reply!r}")
                self._replies.append(reply)
                if len(self._replies) == self._expected:
                    future, self._future = self._future, None
                    if not future.done():
                        future.set_result(self._replies)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"{self.where} broke the protocol: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"Connection to {self.where} lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_exception(exc)


class Pipes:
    """Batches to one Redis server, each over a connection of its own (`_Pipe`), reused.

    Under load one or two batches are in flight at a time, so one or two connections are
    open. A batch that fails, times out (`timeout`, like redis-py's socket timeout) or is
    cancelled closes its connection; the next batch opens another. At most `limit` may be open:
    past that Redis is not answering, and a batch fails at once instead of opening more.
    """

    def __init__(self, client: Redis, timeout: float, limit: int = 64) -> None:
        self.client = client
        self.timeout = timeout
        self.limit = limit
        self._idle: list[_Pipe] = []
        self._open: set[_Pipe] = set()
        self._opening = 0
        self._pid = os.getpid()

    async def exchange(
        self, commands: list[list[Any]], wait: list[Any] | None, batch: Batch | None = None
    ) -> list[Any]:
        """Send the commands (then `wait`, a WAIT command); their replies, errors as exceptions.

        `batch.sent` is set once they are written to a connection.
        """
        pipe = await self._take()
        sent = [*commands, wait] if wait else commands
        future = pipe.exchange(b"".join(pack(c) for c in sent), len(sent))
        if batch is not None:
            batch.sent = True
        timer = asyncio.get_running_loop().call_later(self.timeout, _expire, future, pipe.where)
        try:
            replies = await future
        except BaseException:
            self._drop(pipe)
            raise
        finally:
            timer.cancel()
        self._idle.append(pipe)
        return _waited(replies, wait)

    async def close(self) -> None:
        for pipe in list(self._open):
            self._drop(pipe)

    async def _take(self) -> _Pipe:
        if self._pid != os.getpid():  # a forked child: the connections are the parent's
            self._idle, self._open, self._pid = [], set(), os.getpid()
        while self._idle:
            pipe = self._idle.pop()
            if not pipe.closed:
                return pipe
            self._open.discard(pipe)  # Redis closed it while it was idle
        if len(self._open) + self._opening >= self.limit:
            raise ConnectionError(f"{self.limit} batches are waiting for Redis already")
        conn = self.client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        # redis-py connects: TCP or a unix socket, TLS, AUTH, HELLO, SELECT, CLIENT SETNAME,
        # all within its connect timeout. Then its stream's transport is ours.
        self._opening += 1
        try:
            await conn.connect()
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            self._opening -= 1
        writer: asyncio.StreamWriter | None = getattr(conn, "_writer", None)
        if writer is None:
            await conn.disconnect()
            raise RuntimeError("redis-py's connection has no stream writer to take over")
        transport = cast(asyncio.Transport, writer.transport)
        pipe = _Pipe(conn, transport, (conn._reader, writer))
        transport.set_protocol(pipe)
        # The connection object lets go of the stream (collecting it would close it too).
        conn._reader = conn._writer = None
        self._open.add(pipe)
        return pipe

    def _drop(self, pipe: _Pipe) -> None:
        self._open.discard(pipe)
        with contextlib.suppress(ValueError):
            self._idle.remove(pipe)
        pipe.close()


def _expire(future: asyncio.Future[list[Any]], where: str) -> None:
    if not future.done():
        future.set_exception(TimeoutError(f"Timeout reading from {where}"))


class Batch:
    """Commands collected for one round trip.

    `sent` tells whether any of them were written to a connection: if the round trip then
    fails (a timeout, a broken connection), Redis may have run them.
    """

    def __init__(self, wait_replicas: int = 0, wait_ms: int = 0) -> None:
        self.commands: list[list[Any]] = []
        self.sent = False
        # WAIT for this many replicas after the batch (0: answer as soon as the primary has it).
        self.wait = ["WAIT", wait_replicas, wait_ms] if wait_replicas else None

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append(["EVALSHA", sha, numkeys, *keys_and_args])

    async def send(self, target: Pipes | RedisCluster, only: list[int] | None = None) -> list[Any]:
        """Send the commands (or those at the indices `only`) and read their replies."""
        indices = list(range(len(self.commands))) if only is None else only
        if not indices:
            return []
        if isinstance(target, Pipes):
            return await target.exchange([self.commands[i] for i in indices], self.wait, self)
        return await self._send_cluster(target, indices)

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
                await conn.connect()  # type: ignore[no-untyped-call]  # at once if connected
                self.sent = True  # from here on, it may have reached Redis
                sent = [c for i in idx for c in (["ASKING"], self.commands[i])]
                got = await _exchange(conn, sent, self.wait)
            finally:
                node.release(conn)
            replies.update(zip(idx, got[1::2], strict=True))

    async def _send_node(self, node: ClusterNode, indices: list[int]) -> list[Any]:
        conn = node.acquire_connection()
        try:
            await conn.connect()  # type: ignore[no-untyped-call]  # at once if connected
            self.sent = True  # from here on, it may have reached Redis
            return await _exchange(conn, [self.commands[i] for i in indices], self.wait)
        finally:
            node.release(conn)
