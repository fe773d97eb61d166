"""Tasks for the cancellation tests. Worker subprocesses import this with settings from SPILLWAY_*.

Each run announces itself on a list the test blocks on (``<prefix>:test:started:<task id>``), so
the test cancels at the moment a run is known to be under way, without polling; a sync handler,
in a thread without an event loop, announces itself with a file instead.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import redis.asyncio as aioredis
from pydantic import BaseModel
from tests.clients import ready_client

from spillway import Spillway, TaskContext

app = Spillway()

_client: aioredis.Redis | None = None


async def _redis() -> aioredis.Redis:
    global _client
    if _client is None:
        assert app.settings.redis_url is not None
        _client = await ready_client(app.settings.redis_url, timeout=5, max_connections=64)
    return _client


def started_key(prefix: str, task_id: str) -> str:
    return f"{prefix}:test:started:{task_id}"


async def announce(ctx: TaskContext) -> None:
    """Count this run and wake the test waiting for it to start."""
    client = await _redis()
    await client.hincrby(f"{app.settings.prefix}:test:runs", ctx.task_id, 1)
    await client.rpush(started_key(app.settings.prefix, ctx.task_id), "started")


@app.task(max_retries=2, timeout=60)
async def hang(payload: dict[str, str], ctx: TaskContext) -> str:
    """Waits for a cancel (a minute at most), and notes the `CancelledError` it gets."""
    await announce(ctx)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        client = await _redis()
        await client.rpush(f"{app.settings.prefix}:test:cancelled", ctx.task_id)
        raise
    return "not cancelled"


class Blink(BaseModel):
    max_ms: float


@app.task(max_retries=0)
async def blink(payload: Blink, ctx: TaskContext) -> str:
    """Finishes a few random milliseconds after it starts: about when the test's cancel lands."""
    await announce(ctx)
    await asyncio.sleep(random.uniform(0, payload.max_ms) / 1000)  # noqa: S311 - timing
    return "done"


class Poll(BaseModel):
    directory: str


@app.task(timeout=60)
def poll(payload: Poll, ctx: TaskContext) -> str:
    """A sync handler that works in small steps and stops once `ctx.cancelled` says so."""
    folder = Path(payload.directory)
    (folder / f"{ctx.task_id}.started").touch()
    deadline = time.monotonic() + 30
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)  # one step of the work
    outcome = "cancelled" if ctx.cancelled else "ran out"
    (folder / f"{ctx.task_id}.stopped").write_text(outcome)
    return outcome
