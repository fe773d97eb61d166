"""Limited task types for the limit tests. Worker subprocesses import this with SPILLWAY_*."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel
from tests.apps.core import _redis

from spillway import Spillway, TaskContext

app = Spillway()

# Counts the runs of a type under way now and keeps the most ever seen, atomically.
_ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


class Work(BaseModel):
    seconds: float = 0.0
    #: Sleep only on this attempt (0: every attempt), so a retried run ends quickly.
    sleep_on: int = 0


def counters(prefix: str, task_type: str) -> tuple[str, str]:
    """The keys of a type's runs under way and the most ever seen (one hash slot: a cluster
    runs the script that keeps both)."""
    tag = f"{{{prefix}:test:{task_type}}}"
    return f"{tag}:running", f"{tag}:most"


async def _note(ctx: TaskContext, what: str) -> None:
    client = await _redis()
    prefix = app.settings.prefix
    await client.rpush(
        f"{prefix}:test:events", f"{time.time():.6f} {what} {ctx.type} {ctx.task_id}"
    )


async def _limited_run(payload: Work, ctx: TaskContext) -> None:
    client = await _redis()
    running, most = counters(app.settings.prefix, ctx.type)
    await client.eval(_ENTER, 2, running, most)
    await client.hincrby(f"{app.settings.prefix}:test:runs", ctx.task_id, 1)
    await _note(ctx, "start")
    try:
        if payload.seconds and payload.sleep_on in (0, ctx.attempt):
            await asyncio.sleep(payload.seconds)
    finally:
        await client.decr(running)
        await _note(ctx, "end")


@app.task(concurrency=3, max_retries=3)
async def limited(payload: Work, ctx: TaskContext) -> None:
    """At most three at once across every worker."""
    await _limited_run(payload, ctx)


@app.task(concurrency=2, max_retries=3)
async def pair(payload: Work, ctx: TaskContext) -> None:
    """At most two at once across every worker."""
    await _limited_run(payload, ctx)


@app.task(rate_limit="10/s", max_retries=0)
async def rated(payload: Work, ctx: TaskContext) -> None:
    """At most ten starts a second across every worker."""
    await _note(ctx, "start")


@app.task(max_retries=0)
async def free(payload: Work, ctx: TaskContext) -> None:
    """No limit: runs as fast as the workers go."""
    await _note(ctx, "start")
    await _note(ctx, "end")
