"""Tasks for the engine tests. Worker subprocesses import this with settings from SPILLWAY_*."""

from __future__ import annotations

import asyncio
import os
from typing import cast

import redis.asyncio as aioredis
from pydantic import BaseModel

from spillway import Spillway, TaskContext
from spillway.broker.connection import make_client

app = Spillway()

_client: aioredis.Redis | None = None


_lock = asyncio.Lock()


async def _redis() -> aioredis.Redis:
    global _client
    async with _lock:
        return _client or await _connect()


async def _connect() -> aioredis.Redis:
    global _client
    if _client is None:
        assert app.settings.redis_url is not None
        client = make_client(
            app.settings.redis_url, socket_timeout=5, connect_timeout=5, max_connections=512
        )
        if not isinstance(client, aioredis.Redis):
            await client.initialize()  # before concurrent use (see Broker.check_server)
        _client = cast(aioredis.Redis, client)  # a cluster client speaks the same commands
    return _client


_gate = asyncio.Semaphore(16)  # bounded connections per process


async def record_run(ctx: TaskContext) -> None:
    """Count executions per task id, and note which process ran it."""
    key = f"{app.settings.prefix}:test:runs"
    async with _gate:
        client = await _redis()
        await client.hincrby(key, ctx.task_id, 1)
        await client.rpush(f"{app.settings.prefix}:test:log", f"{ctx.task_id}:{os.getpid()}")


class Sleep(BaseModel):
    seconds: float = 0.0


@app.task(max_retries=3)
async def count(payload: Sleep, ctx: TaskContext) -> int:
    """Records its execution, sleeps, returns the attempt number."""
    await record_run(ctx)
    if payload.seconds:
        await asyncio.sleep(payload.seconds)
    return ctx.attempt


@app.task(max_retries=1)
async def crash(payload: Sleep, ctx: TaskContext) -> None:
    """Kills the whole worker process, every time."""
    await record_run(ctx)
    os._exit(1)
