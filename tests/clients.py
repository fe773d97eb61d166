"""A Redis client for test code and the tests' applications (a cluster client on a cluster)."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from spillway.broker.connection import make_client

__all__ = ["ready_client"]


async def ready_client(url: str, *, timeout: float, max_connections: int) -> aioredis.Redis:
    """A client of `url` that knows the cluster's slot map before its first command.

    redis-py's cluster client, first used by several callers at once, initialises once per
    caller and closes connections in use ("Connection closed by server" in a test's BLPOP;
    `Broker.check_server` initialises its own clients for the same reason). A cluster client
    speaks the same commands, hence the cast.
    """
    client = make_client(
        url, socket_timeout=timeout, connect_timeout=timeout, max_connections=max_connections
    )
    if not isinstance(client, aioredis.Redis):
        await client.initialize()
    return cast(aioredis.Redis, client)
