"""How redis-py's errors map to Spillway's (`spillway.broker.types.unavailable`)."""

from __future__ import annotations

import pytest
import redis.asyncio.connection
from redis.exceptions import ConnectionError, RedisClusterException, ResponseError

from spillway import Spillway
from spillway.broker.types import connection_lost, unavailable
from spillway.errors import BrokerUnavailable


def _raised_in(filename: str, source: str) -> BaseException:
    """The exception `source` raises, its frame's code attributed to `filename`."""
    try:
        exec(compile(source, filename, "exec"), {})  # noqa: S102 - a fixed statement of ours
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def test_a_cluster_with_no_reachable_node_is_unavailable_not_a_bug() -> None:
    # redis-py raises this mid-failover; it is not a RedisError, and it once killed workers.
    error = RedisClusterException("Redis Cluster cannot be connected.")
    assert isinstance(unavailable(error), BrokerUnavailable)


def test_lost_connections_are_unavailable_and_a_bad_command_is_a_bug() -> None:
    assert isinstance(unavailable(ConnectionError("reset")), BrokerUnavailable)
    assert unavailable(ResponseError("ERR wrong number of arguments")) is None


# The statement redis-py's asyncio connection ran when a connect raced the disconnect of a
# cluster failover (the chaos suite's scenario 14 once lost a worker to it).
LEAK = "_writer = None\n_writer.writelines([b'PING'])"
# What uvloop raises for a write to a transport closed under redis-py's connection (a cluster
# primary killed mid-batch: scenario 14 once answered it as a 500).
CLOSED = (
    "raise RuntimeError('unable to perform operation on <TCPTransport closed=True "
    "reading=False 0x1>; the handler is closed')"
)
LEAKS = pytest.mark.parametrize(
    ("source", "kind"), [(LEAK, AttributeError), (CLOSED, RuntimeError)], ids=["leak", "closed"]
)


@LEAKS
def test_an_error_leaked_by_redis_py_connection_code_is_a_lost_connection(
    source: str, kind: type[Exception]
) -> None:
    leaked = _raised_in(redis.asyncio.connection.__file__, source)
    assert isinstance(leaked, kind)
    assert isinstance(unavailable(leaked), BrokerUnavailable)
    assert connection_lost(leaked)
    # The same error raised in any other code is a bug, and passes through.
    ours = _raised_in(__file__, source)
    assert unavailable(ours) is None
    assert not connection_lost(ours)
    assert unavailable(TypeError("'NoneType' object is not callable")) is None


@LEAKS
async def test_the_broker_guard_maps_a_leaked_error_and_lets_a_bug_through(
    app: Spillway, source: str, kind: type[Exception]
) -> None:
    await app.connect()
    core = app.broker.core
    with pytest.raises(BrokerUnavailable):
        async with core.guard():
            raise _raised_in(redis.asyncio.connection.__file__, source)
    with pytest.raises(kind):
        async with core.guard():
            raise _raised_in(__file__, source)
