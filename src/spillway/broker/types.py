"""The values that cross the broker's boundary, and how Redis errors map to Spillway's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
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
    "Outcome",
    "Started",
    "as_int",
    "ms",
    "per_node",
    "stream_items",
    "unavailable",
]

# Errors that mean "Redis cannot take this now", as opposed to a bug in a command. redis-py
# strips the code from the replies it has a class for (OOM, READONLY, ...), so those are
# recognised by class, the others by their code.
# MOVED and ASK count too: a redirect still unresolved after the retries (a slot that keeps
# moving) is a moment of unavailability, not a bug.
_UNAVAILABLE_ERRORS = (
    OutOfMemoryError, ReadOnlyError, ClusterDownError, TryAgainError, MovedError, AskError,
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


def unavailable(exc: BaseException) -> BrokerUnavailable | None:
    """The `BrokerUnavailable` an exception from redis-py means, or None if it is a bug."""
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


@dataclass(frozen=True, slots=True)
class Delivery:
    """A stream entry handed to this consumer."""

    queue: str
    shard: int
    entry_id: str
    task_id: str


@dataclass(frozen=True, slots=True)
class Started:
    """A delivery that `begin` turned into a run: everything the worker needs to run it."""

    delivery: Delivery
    type: str
    payload: str
    attempts: int
    policy: RetryPolicy
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: `kind` is succeeded, retry or dead."""

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
