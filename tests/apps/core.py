"""Tasks for the engine tests. Worker subprocesses import this with settings from SPILLWAY_*."""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis
from pydantic import BaseModel
from tests.clients import ready_client

from spillway import Spillway, TaskContext

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
        _client = await ready_client(app.settings.redis_url, timeout=5, max_connections=512)
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
