"""The values that cross the broker's boundary, and how Redis errors map to Spillway's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio.connection
import redis.connection
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from spillway.errors import BrokerUnavailable
from spillway.retry import RetryPolicy

__all__ = [
    "AcceptRequest",
    "Delivery",
    "DueCheck",
    "Outcome",
    "Started",
    "as_int",
    "connection_lost",
    "leaked_by_connection",
    "ms",
    "per_node",
    "stream_items",
    "unavailable",
]

# Errors that mean "Redis cannot take this now", as opposed to a bug in a command. redis-py
# strips the code from the replies it has a class for (OOM, READONLY, ...), so those are
# recognised by class, the others by their code.
# MOVED and ASK count too: a redirect still unresolved after the retries (a slot that keeps
# moving) is a moment of unavailability, not a bug. So does redis-py's ClusterError ("TTL
# exhausted."): what it raises when a command's redirects (TRYAGAIN while a slot's keys are
# split between two nodes mid-MIGRATE, ASK/MOVED bouncing until every node has the new owner)
# outlast its attempts. As a bug it ended a worker's reader during a resharding.
_UNAVAILABLE_ERRORS = (
    OutOfMemoryError, ReadOnlyError, ClusterDownError, TryAgainError, MovedError, AskError,
    ClusterError,
)  # fmt: skip
_UNAVAILABLE_REPLIES = (
    "OOM",
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "BUSY",
    "TRYAGAIN",
)


# redis-py's connection code lets a closed transport's internals leak as AttributeError or
# TypeError instead of ConnectionError: a write to a connection the peer reset
# (redis/redis-py#4287), or a connect racing the disconnect of a cluster failover (seen in the
# chaos suite: a write on a stream writer already set to None). Under uvloop, a write to a
# transport closed under it is a RuntimeError ("unable to perform operation on <TCPTransport
# closed=True ...>; the handler is closed": a cluster primary killed mid-batch, scenario 14 in
# CI of d5ecdec, answered as a 500). Such an error raised in or under that code is a lost
# connection; the same class raised anywhere else stays a bug.
_CONNECTION_CODE = frozenset({redis.asyncio.connection.__file__, redis.connection.__file__})


def leaked_by_connection(exc: BaseException) -> bool:
    """Whether `exc` is an AttributeError, TypeError or RuntimeError raised inside redis-py's
    connection code."""
    if not isinstance(exc, AttributeError | TypeError | RuntimeError):
        return False
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in _CONNECTION_CODE:
            return True
        tb = tb.tb_next
    return False


def connection_lost(exc: BaseException) -> bool:
    """Whether an error of a connection held open (pub/sub) means it is gone, not a bug."""
    return isinstance(exc, RedisError | OSError) or leaked_by_connection(exc)


def unavailable(exc: BaseException) -> BrokerUnavailable | None:
    """The `BrokerUnavailable` an exception from redis-py means, or None if it is a bug."""
    if leaked_by_connection(exc):
        return BrokerUnavailable(f"Redis connection lost: {type(exc).__name__}: {exc}")
    # RedisClusterException ("cannot be connected": no node reachable) is not a RedisError.
    if isinstance(
        exc,
        RedisConnectionError | RedisTimeoutError | TimeoutError | OSError | RedisClusterException,
    ):
        return BrokerUnavailable(f"Redis is unreachable: {exc or type(exc).__name__}")
    if isinstance(exc, _UNAVAILABLE_ERRORS) or (
        isinstance(exc, ResponseError) and str(exc).startswith(_UNAVAILABLE_REPLIES)
    ):
        return BrokerUnavailable(f"Redis refused the command: {exc}")
    return None


# Not frozen, on the accept path: a frozen dataclass sets each field through
# object.__setattr__ (docs/benchmarks.md#accept-request-objects).
@dataclass(slots=True)
class AcceptRequest:
    """One validated task to write: the record plus its stream entry (or due-set member)."""

    task_id: str
    type: str
    queue: str
    payload: str  # JSON
    policy: RetryPolicy
    delay_ms: int = 0
    idempotency_key: str | None = None  # already scoped by the caller
    fingerprint: str = ""
    owner: str = ""  # the API caller's scope when keys are on: who may read the task
    expires_ms: int = 0  # not started this long after the accept: expired (0 = never)
    caller: str = ""  # whose turn it waits for, when callers are tracked ('' = no one's)
    trace: str = ""  # the W3C traceparent of the span that sent it ('' = not traced)
    callback: str = ""  # the URL of its completion webhook ('' = none)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A stream entry handed to this consumer."""

    queue: str
    shard: int
    entry_id: str
    task_id: str


@dataclass(frozen=True, slots=True)
class DueCheck:
    """One due-task check of a worker: tasks promoted, and the paused queues read with it
    (`malformed`: members of the paused set left out because they are not queue names)."""

    promoted: int
    paused: frozenset[str]
    malformed: int = 0


@dataclass(frozen=True, slots=True)
class Started:
    """A delivery that `begin` turned into a run: everything the worker needs to run it."""

    delivery: Delivery
    type: str
    payload: str
    attempts: int
    policy: RetryPolicy
    created_at_ms: int
    trace: str = ""  # the record's traceparent, untrusted ('' = not traced)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: `kind` is succeeded, retry, dead or cancelled."""

    delivery: Delivery
    type: str
    kind: str
    value: str  # result JSON, or the error text
    traceback: str = ""
    retry_delay_ms: int = 0
    attempts: int = 0


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def per_node(reply: Any) -> list[dict[str, Any]]:
    """INFO answers one dict, or on a cluster one dict per node."""
    if isinstance(reply, dict) and reply and all(isinstance(v, dict) for v in reply.values()):
        return list(reply.values())
    return [reply]


def stream_items(reply: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREADGROUP replies come as a list (RESP2) or a dict (RESP3); normalise them."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
    return [(k, v) for k, v in reply]


def as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
