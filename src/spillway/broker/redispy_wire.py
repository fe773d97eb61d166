"""The fast senders, built on redis-py's internals: the only module that touches them.

For batches of thousands of script calls, redis-py's generic command packer was most of the
cost of an enqueue (it type-checks and encodes every argument through several layers); here
hiredis's C encoder packs the commands and the replies are read in order. Small batches are
the common case under HTTP load, and there redis-py's machinery around each call (taking and
returning a pool connection, a timeout scope per read, the stream reader) cost more than the
batch itself (docs/benchmarks.md#redis-py-batches).

What this relies on, beyond redis-py's public API (`NEEDS`, checked by `probe`):

* a single server (`PipeSender`): `ConnectionPool.make_connection()` and `connect()` to open a
  connection (TLS, AUTH, SELECT, the client name are redis-py's job), then its stream taken
  over: the private `_reader`/`_writer` attributes, `_host_error()` for messages, and
  `redis._parsers.base.BaseParser.parse_error` to turn error replies into redis-py's exception
  classes (`NoScriptError`, ...) in a hiredis `Reader` fed from the transport;
* a cluster (`ClusterSender`): `RedisCluster.nodes_manager` (`get_node_from_slot`,
  `initialize`), `ClusterNode.acquire_connection()`/`release()`, and the connection's
  `send_packed_command(check_health=)`, `read_response()` and `disconnect(nowait=)`;
* a version-dependent pool option: `maint_notifications_config` (`pool_options`).

When `probe` finds any of it missing or changed, `spillway.broker.senders` uses redis-py's
public pipelines instead, with one warning; a take-over that finds the connection not shaped
as expected does the same, once, at the first batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any, cast

import hiredis
import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import (
    AskError,
    ConnectionError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from spillway.broker.batch import Batch, Sender

__all__ = [
    "NEEDS",
    "ClusterSender",
    "Need",
    "PipeSender",
    "Pipes",
    "TakeoverFailed",
    "cluster_ready",
    "pack",
    "pool_options",
    "probe",
    "refresh_slots",
    "version",
]

_REDIRECTS = 3

log = logging.getLogger("spillway.broker")


# --- the probe -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """One name the fast paths use: `attr` (dotted) of `module`, callable with `params`."""

    module: str
    attr: str
    params: tuple[str, ...] = ()


NEEDS: tuple[Need, ...] = (
    Need("hiredis", "pack_command"),
    Need("hiredis", "Reader"),
    Need("redis._parsers.base", "BaseParser.parse_error", ("response",)),
    Need("redis.asyncio.connection", "ConnectionPool.make_connection"),
    Need("redis.asyncio.connection", "AbstractConnection.connect"),
    Need("redis.asyncio.connection", "AbstractConnection._host_error"),
    Need("redis.asyncio.connection", "AbstractConnection.disconnect", ("nowait",)),
    Need(
        "redis.asyncio.connection",
        "AbstractConnection.send_packed_command",
        ("command", "check_health"),
    ),
    Need("redis.asyncio.connection", "AbstractConnection.read_response"),
    Need("redis.asyncio.cluster", "ClusterNode.acquire_connection"),
    Need("redis.asyncio.cluster", "ClusterNode.release", ("connection",)),
    Need("redis.asyncio.cluster", "NodesManager.initialize"),
    Need("redis.asyncio.cluster", "NodesManager.get_node_from_slot", ("slot",)),
)


def probe(needs: tuple[Need, ...] | None = None) -> str | None:
    """Why the fast paths cannot run on the installed redis-py (`needs`, by default `NEEDS`),
    or None if they can. Checked once per list."""
    return _probe(NEEDS if needs is None else needs)


@functools.cache
def _probe(needs: tuple[Need, ...]) -> str | None:
    for need in needs:
        try:
            found: Any = importlib.import_module(need.module)
            for part in need.attr.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            return f"{need.module}.{need.attr} is missing"
        if not callable(found):
            return f"{need.module}.{need.attr} is not callable"
        if need.params:
            try:
                params = inspect.signature(found).parameters
            except (TypeError, ValueError):
                continue  # a C function without a signature: the call itself will tell
            missing = [p for p in need.params if p not in params]
            if missing:
                return f"{need.module}.{need.attr} takes no {', '.join(missing)}"
    return None


def pool_options() -> dict[str, Any]:
    """Version-dependent options for a single server's connection pool.

    redis-py's asyncio connections take maintenance notifications from 8.1 (7.x and 8.0 have
    the module, but their connections refuse the option). When on, and "auto" counts as on,
    they skip the check for a connection Redis closed (a restart): the first command on each
    pooled connection after a restart failed, a 503 for a live Redis. So: off, where it exists.
    """
    if "maint_notifications_config" not in inspect.signature(AbstractConnection).parameters:
        return {}
    from redis.maint_notifications import MaintNotificationsConfig

    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def version() -> str:
    """The installed redis-py's version, for messages."""
    return str(getattr(redis, "__version__", "unknown"))


# --- shared --------------------------------------------------------------------------------------


def pack(args: list[Any]) -> bytes:
    """One command in RESP: an array of bulk strings (hiredis's C encoder)."""
    packed: bytes = hiredis.pack_command(tuple(args))
    return packed


_last_refresh: dict[int, float] = {}


async def refresh_slots(cluster: RedisCluster) -> None:
    """Reload the cluster's slot map, at most twice a second per client.

    Without the fast path's names, a no-op: redis-py refreshes it itself on MOVED.
    """
    if probe() is not None:
        return
    now = asyncio.get_running_loop().time()
    if now - _last_refresh.get(id(cluster), 0.0) < 0.5:
        return
    _last_refresh[id(cluster)] = now
    # No node reachable (mid-failover) raises RedisClusterException, not a RedisError.
    with contextlib.suppress(RedisError, RedisClusterException, OSError):
        await cluster.nodes_manager.initialize()


# --- a single server -----------------------------------------------------------------------------


class TakeoverFailed(RuntimeError):
    """A connection redis-py opened is not shaped as the take-over expects; nothing was sent."""


class _Pipe(asyncio.Protocol):
    """One connection taken over from redis-py: a batch written at once, its replies parsed
    by hiredis as they arrive and handed over when the last one is in.

    One batch at a time: the `Pipes` that owns it lends it to one caller and drops it (closes
    it) when a batch fails, times out or is cancelled, as the connection's state is unknown.
    """

    def __init__(
        self, reader: Any, where: str, transport: asyncio.Transport, stream: tuple[object, ...]
    ) -> None:
        self.reader = reader
        self.transport = transport
        self.where = where  # host:port, or the socket's path
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


#: What a taken-over connection's transport must do.
_TRANSPORT = ("set_protocol", "write", "close", "is_closing")


def _take_over(conn: AbstractConnection) -> _Pipe:
    """The connected `conn`'s stream, as a `_Pipe`; `TakeoverFailed` if it is not shaped as
    expected (checked before anything is changed)."""
    from redis._parsers.base import BaseParser  # checked by the probe

    writer = getattr(conn, "_writer", None)
    stream_reader = getattr(conn, "_reader", None)
    transport = getattr(writer, "transport", None)
    # Duck-typed: uvloop's transports are not asyncio.Transport subclasses.
    if stream_reader is None or not all(
        callable(getattr(transport, name, None)) for name in _TRANSPORT
    ):
        raise TakeoverFailed("the connection has no stream reader and writer to take over")
    encoder = getattr(conn, "encoder", None)
    options: dict[str, Any] = {"replyError": BaseParser.parse_error}  # e.g. NoScriptError
    try:
        if encoder is not None and encoder.decode_responses:
            options |= {"encoding": encoder.encoding, "errors": encoder.encoding_errors}
        reader = hiredis.Reader(**options)
        where = str(conn._host_error())
    except (AttributeError, TypeError) as exc:
        raise TakeoverFailed(f"the connection is not shaped as expected: {exc}") from exc
    taken = cast(asyncio.Transport, transport)
    pipe = _Pipe(reader, where, taken, (stream_reader, writer))
    taken.set_protocol(pipe)
    # The connection object lets go of the stream (collecting it would close it too).
    conn._reader = conn._writer = None
    return pipe


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
        """Send the commands (then `wait`, a WAIT command); their replies, errors as exceptions,
        the WAIT's included. `batch.sent` is set once they are written to a connection."""
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
        return replies

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
            pipe = _take_over(conn)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            self._opening -= 1
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


class PipeSender:
    """Batches to a single server over `Pipes`; through `fallback` from the first take-over
    that fails on (a warning, once): the batch that found it is sent there, not failed."""

    def __init__(self, client: Redis, timeout: float, fallback: Sender) -> None:
        self.pipes = Pipes(client, timeout)
        self.fallback = fallback
        self._fast = True

    async def send(self, batch: Batch, only: list[int] | None = None) -> list[Any]:
        indices = batch.indices(only)
        if not indices:
            return []
        if self._fast:
            try:
                commands = [batch.commands[i] for i in indices]
                return batch.strip_wait(await self.pipes.exchange(commands, batch.wait, batch))
            except TakeoverFailed as exc:
                log.warning(
                    "redis-py %s: taking over a connection failed (%s); script batches go "
                    "through its public pipeline from now on",
                    version(),
                    exc,
                )
                self._fast = False
                await self.pipes.close()
        return await self.fallback.send(batch, indices)

    async def close(self) -> None:
        await self.pipes.close()
        await self.fallback.close()


# --- a cluster -----------------------------------------------------------------------------------


async def _exchange(
    conn: AbstractConnection, commands: list[list[Any]], wait: list[Any] | None
) -> list[Any]:
    """Write the commands (then `wait`), read one reply each, the WAIT's included. Error
    replies come back as exception objects."""
    sent = [*commands, wait] if wait else commands
    try:
        await conn.send_packed_command(b"".join(pack(c) for c in sent), check_health=False)
        replies: list[Any] = []
        for _ in sent:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # the connection is still in step: keep reading
                replies.append(exc)
        return replies
    except BaseException:
        # Cancelled or broken mid-batch: the connection's state is unknown, drop it.
        await conn.disconnect(nowait=True)
        raise


class ClusterSender:
    """Batches to a cluster: each command to the node owning its key's slot, one round trip
    per node, on redis-py's node connections; MOVED, ASK and TRYAGAIN followed."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster

    async def close(self) -> None:
        """Nothing of its own: the node connections are the cluster client's."""

    async def send(self, batch: Batch, only: list[int] | None = None) -> list[Any]:
        """A redirected command was not executed, so resending it is safe."""
        indices = batch.indices(only)
        if not indices:
            return []
        cluster = self.cluster
        replies: dict[int, Any] = {}
        todo = indices
        for attempt in range(_REDIRECTS + 1):
            by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
            for i in todo:
                slot = cluster.keyslot(batch.first_key(i))
                node = cluster.nodes_manager.get_node_from_slot(slot)
                by_node.setdefault(node.name, (node, []))[1].append(i)
            try:
                results = await asyncio.gather(
                    *(_send_node(batch, node, idx) for node, idx in by_node.values())
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
                await _send_asking(cluster, batch, asked, replies)
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
    cluster: RedisCluster, batch: Batch, indices: list[int], replies: dict[int, Any]
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
            batch.sent = True  # from here on, it may have reached Redis
            sent = [c for i in idx for c in (["ASKING"], batch.commands[i])]
            got = batch.strip_wait(await _exchange(conn, sent, batch.wait))
        finally:
            node.release(conn)
        replies.update(zip(idx, got[1::2], strict=True))


async def _send_node(batch: Batch, node: ClusterNode, indices: list[int]) -> list[Any]:
    conn = node.acquire_connection()
    try:
        await conn.connect()  # type: ignore[no-untyped-call]  # at once if connected
        batch.sent = True  # from here on, it may have reached Redis
        commands = [batch.commands[i] for i in indices]
        return batch.strip_wait(await _exchange(conn, commands, batch.wait))
    finally:
        node.release(conn)


def cluster_ready(cluster: RedisCluster) -> str | None:
    """Why this cluster client lacks what `ClusterSender` uses, or None."""
    if not callable(getattr(getattr(cluster, "nodes_manager", None), "get_node_from_slot", None)):
        return "RedisCluster.nodes_manager.get_node_from_slot is missing"
    return None
