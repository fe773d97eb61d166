"""Helpers of the tests that run the engine in one process: a burst drain, a Redis of a test's
own, and counts of what the streams hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster

from spillway import Settings, Spillway, Worker
from spillway.broker import GROUP, Delivery
from spillway.embedded import EmbeddedRedis


class Item(BaseModel):
    n: int


@contextlib.asynccontextmanager
async def own_server(
    settings: Settings, **redis: Any
) -> AsyncIterator[tuple[EmbeddedRedis, Spillway]]:
    """A Redis of this test's own (to kill, pause or fill) and an app on it, both closed after."""
    with EmbeddedRedis(**redis) as server:
        app = Spillway(settings.model_copy(update={"redis_url": server.url}))
        try:
            yield server, app
        finally:
            await app.close()


async def drain(app: Spillway, **kwargs: Any) -> Worker:
    """Run a burst worker until every queue is empty."""
    worker = Worker(app, burst=True, **kwargs)
    await asyncio.wait_for(worker.run(), 30)
    return worker


def stream_key(app: Spillway, queue: str = "default") -> str:
    """The stream of shard 0 (where tests inject entries by hand)."""
    return app.broker.keys.shard(0).stream(queue)


async def stream_lengths(app: Spillway, redis: aioredis.Redis) -> int:
    """Entries in every shard stream of the default queue."""
    return sum([await redis.xlen(s) for s in app.broker.core.streams(["default"])])


async def pending(app: Spillway, redis: aioredis.Redis) -> int:
    """Delivered-but-unacknowledged entries over every shard stream of the default queue."""
    return sum(
        [(await redis.xpending(s, GROUP))["pending"] for s in app.broker.core.streams(["default"])]
    )


async def read_everything(app: Spillway, consumer: str) -> list[Delivery]:
    """Read as `consumer` from each shard stream in turn (a read cannot span cluster slots)."""
    out: list[Delivery] = []
    for stream, where in app.broker.core.streams(["default"]).items():
        out += await app.broker.work.read(consumer, {stream: where}, 10, None)
    return out


async def past_expiry(app: Spillway, *task_ids: str) -> None:
    """Return once Redis's clock, which decides expiry, has reached each task's `expires_at`.

    Waits the time left by the records' own timestamps, read against the server's clock, so a
    test of expiry neither guesses a sleep nor depends on this machine's clock agreeing.
    """
    for task_id in task_ids:
        record = await app.get(task_id)
        assert record.expires_at is not None, f"task {task_id} has no expiry"
        deadline_ms = round(record.expires_at.timestamp() * 1000)
        node = app.broker.keys.for_task(task_id).task(task_id)
        # Sleeps the time left, then checks it on the server's clock (no event says "now").
        while (left := deadline_ms - await server_ms(app, node)) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left / 1000)


async def server_ms(app: Spillway, key: str) -> int:
    """The clock of the Redis server (on a cluster: the primary) that holds `key`, in ms."""
    client = app.broker.client
    if isinstance(client, RedisCluster):
        seconds, micros = await client.execute_command(
            "TIME", target_nodes=client.get_node_from_key(key)
        )
    else:
        seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000
