"""How redis-py's errors map to Spillway's (`spillway.broker.types.unavailable`)."""

from __future__ import annotations

from redis.exceptions import ConnectionError, RedisClusterException, ResponseError

from spillway.broker.types import unavailable
from spillway.errors import BrokerUnavailable


def test_a_cluster_with_no_reachable_node_is_unavailable_not_a_bug() -> None:
    # redis-py raises this mid-failover; it is not a RedisError, and it once killed workers.
    error = RedisClusterException("Redis Cluster cannot be connected.")
    assert isinstance(unavailable(error), BrokerUnavailable)


def test_lost_connections_are_unavailable_and_a_bad_command_is_a_bug() -> None:
    assert isinstance(unavailable(ConnectionError("reset")), BrokerUnavailable)
    assert unavailable(ResponseError("ERR wrong number of arguments")) is None
