"""Helpers of the tests that run the engine in one process: a burst drain, a Redis of a test's
own, and counts of what the streams hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel

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
