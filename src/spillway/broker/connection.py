"""Redis clients from a URL: a single server (``redis://``, ``rediss://``, ``unix://``) or a
Redis Cluster (``redis+cluster://host:port,host:port`` or ``rediss+cluster://...``).

Every client fails fast: no retries inside redis-py (its default retries turned a refused
connection into seconds of waiting), short connect and socket timeouts, and a bounded pool that
waits for a free connection instead of raising.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from spillway.broker.redispy_wire import pool_options
from spillway.errors import ConfigurationError

__all__ = ["AnyRedis", "is_cluster_url", "make_client", "pubsub_client"]

AnyRedis = Redis | RedisCluster


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in ("redis+cluster", "rediss+cluster")


def _options(socket_timeout: float, connect_timeout: float) -> dict[str, Any]:
    return {
        "decode_responses": True,
        # Entries someone else wrote may hold any bytes (a pickle, say): never crash on them.
        "encoding_errors": "replace",
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "client_name": f"spillway:{socket.gethostname()}",
    }


def make_client(
    url: str, *, socket_timeout: float, connect_timeout: float, max_connections: int
) -> AnyRedis:
    """A client for `url`; `socket_timeout` bounds every reply (a blocking read adds its block)."""
    options = _options(socket_timeout, connect_timeout)
    if not is_cluster_url(url):
        return Redis(
            connection_pool=BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=connect_timeout,
                health_check_interval=30,
                **pool_options(),  # what this redis-py version needs (see there)
                **options,
            )
        )
    parts = urlsplit(url)
    nodes = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(
                f"cluster node {item!r} in SPILLWAY_REDIS_URL is not host:port"
            )
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    # Failovers surface as connection errors: let redis-py refresh its slot map and retry a
    # single command twice, quickly (our own timeout still bounds the whole call). MOVED and
    # ASK redirects are followed without counting as retries.
    options["retry"] = Retry(ExponentialBackoff(cap=0.1, base=0.01), 2)
    return RedisCluster(
        startup_nodes=nodes,
        username=parts.username,
        password=parts.password,
        ssl=parts.scheme == "rediss+cluster",
        # Per node, and the cluster client raises rather than waits when they are all busy.
        max_connections=max_connections * 4,
        **options,
    )


def pubsub_client(client: AnyRedis, connect_timeout: float) -> tuple[Redis, bool]:
    """A plain client for SUBSCRIBE, and whether the caller owns (must close) it.

    On a cluster PUBLISH reaches every node, so a client of any one node will do; a new node is
    picked on every call, so a reconnect after that node failed finds a live one.
    """
    if isinstance(client, Redis):
        return client, False
    node = client.get_random_node()
    kwargs = dict(node.connection_kwargs)
    kwargs.pop("connection_pool", None)
    owned = Redis(
        host=node.host,
        port=int(node.port),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        **_options(connect_timeout, connect_timeout),
    )
    return owned, True
