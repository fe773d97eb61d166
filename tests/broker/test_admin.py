"""Housekeeping: idle consumers are forgotten only when they hold nothing."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from tests.engine import Item

from spillway import Spillway
from spillway.broker import GROUP


async def test_idle_consumers_are_forgotten_only_when_they_hold_nothing(
    app: Spillway, redis: aioredis.Redis
) -> None:
    @app.task
    async def job(item: Item) -> None:
        return None

    await app.enqueue("job", {"n": 1})
    streams = app.broker.core.streams(["default"])
    stream = next(iter([s for s in streams if await redis.xlen(s)]))  # the task's shard
    await redis.xgroup_createconsumer(stream, GROUP, "gone-empty")
    await app.broker.work.read("gone-holding", {stream: streams[stream]}, 10, None)
    await asyncio.sleep(0.01)

    assert await app.broker.work.prune_consumers(["default"], idle_ms=0) == 1
    names = {c["name"] for c in await redis.xinfo_consumers(stream, GROUP)}
    assert names == {"gone-holding"}  # its delivery stays claimable
