"""Redis clients from a URL: a single server (``redis://``, ``rediss://``, ``unix://``) or a
Redis Cluster (``redis+cluster://host:port,host:port`` or ``rediss+cluster://...``).

redis-py reads every URL (`from_url`), the cluster's too: the scheme picks TLS, the user name
and password are percent-decoded, and the query's connection options (``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``, ...) reach every
connection, the pub/sub one of a cluster included (`pubsub_client`).

Every client fails fast: no retries inside redis-py (its default retries turned a refused
connection into seconds of waiting), short connect and socket timeouts, and a bounded pool that
waits for a free connection instead of raising.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisClusterException

from spillway.broker.redispy_wire import pool_options
from spillway.errors import ConfigurationError

__all__ = ["AnyRedis", "is_cluster_url", "make_client", "pubsub_client"]

AnyRedis = Redis | RedisCluster

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in _CLUSTER_SCHEMES


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
    """A client for `url`; `socket_timeout` bounds every reply (a blocking read adds its block).

    Options in the URL's query win over these defaults (redis-py's rule for `from_url`).
    """
    options = _options(socket_timeout, connect_timeout)
    if not is_cluster_url(url):
        _check_tls_options(url)
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
    first, others = _cluster_nodes(url)
    _check_tls_options(first)
    # Failovers surface as connection errors: let redis-py refresh its slot map and retry a
    # single command twice, quickly (our own timeout still bounds the whole call). MOVED and
    # ASK redirects are followed without counting as retries.
    options["retry"] = Retry(ExponentialBackoff(cap=0.1, base=0.01), 2)
    try:
        return RedisCluster.from_url(
            first,
            # redis-py gives these the first node's connection options (TLS, credentials).
            startup_nodes=others,
            # Per node, and the cluster client raises rather than waits when they are all busy.
            max_connections=max_connections * 4,
            **options,
        )
    except (TypeError, ValueError, RedisClusterException) as exc:
        # An unknown or malformed query option, or a database other than 0.
        raise ConfigurationError(f"SPILLWAY_REDIS_URL is not a usable cluster URL: {exc}") from None


def _cluster_nodes(url: str) -> tuple[str, list[ClusterNode]]:
    """The URL of the first node, for redis-py's parser (credentials still percent-encoded,
    path and query kept), and the other nodes."""
    parts = urlsplit(url)
    # The last @: an unencoded @ in a password must not end the credentials.
    credentials, at, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, str]] = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(
                f"cluster node {item!r} in SPILLWAY_REDIS_URL is not host:port"
            )
        nodes.append((host, port))
    (host, port), rest = nodes[0], nodes[1:]
    netloc = f"{credentials}{at}{host}:{port}"
    first = urlunsplit((_CLUSTER_SCHEMES[parts.scheme], netloc, parts.path, parts.query, ""))
    return first, [ClusterNode(h.strip("[]"), int(p)) for h, p in rest]


def _check_tls_options(url: str) -> None:
    """Refuse ``ssl_*`` options on a plaintext scheme: they would be ignored (a cluster) or
    fail at the first connection, and either way the connection would not be encrypted."""
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        raise ConfigurationError(f"SPILLWAY_REDIS_URL: {exc}") from None
    tls_options = sorted(name for name in parsed if name.startswith("ssl"))
    if tls_options and parsed.get("connection_class") is not SSLConnection:
        raise ConfigurationError(
            f"SPILLWAY_REDIS_URL sets {', '.join(tls_options)} but its scheme is not TLS: "
            "use rediss:// (or rediss+cluster://)"
        )


def pubsub_client(client: AnyRedis, connect_timeout: float) -> tuple[Redis, bool]:
    """A plain client for SUBSCRIBE, and whether the caller owns (must close) it.

    On a cluster PUBLISH reaches every node, so a client of any one node will do; a new node is
    picked on every call, so a reconnect after that node failed finds a live one. It connects
    as the cluster client does (the node's connection class and options: TLS, certificates,
    credentials); a client built from host, port and password alone had been plaintext.
    """
    if isinstance(client, Redis):
        return client, False
    node = client.get_random_node()
    kwargs = dict(node.connection_kwargs)
    kwargs.pop("connection_pool", None)
    # Ours win: a single server's timeouts and pool options (see `pool_options`) for this one.
    kwargs |= _options(connect_timeout, connect_timeout) | pool_options()
    pool = ConnectionPool(connection_class=node.connection_class, **kwargs)
    # from_pool: closing the client closes its pool too.
    return Redis.from_pool(pool), True
