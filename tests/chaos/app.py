"""The application the chaos scenarios run: `tests.chaos.app:app` in the API and the workers.

Every handler writes an execution log to Redis (``<prefix>:chaos:exec``): an ``S`` line when it
starts and an ``E`` line when it ends, each ``kind|task_id|attempt|pid|time``. The checker
counts executions and finds overlapping runs of one task from it.

``CHAOS_NO_RENEW=1`` turns claim renewal (and reclaiming, which also refreshes a worker's own
claims) off in the worker: scenario 5's negative control, to prove the checker sees the overlap
that renewal prevents when another worker steals the task. A test switch, not a setting.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import redis.asyncio as aioredis
from pydantic import BaseModel
from tests.clients import ready_client

from spillway import Spillway, TaskContext

__all__ = ["EXEC_LOG", "Job", "app"]

app = Spillway()

#: Suffix of the execution-log list (the key is ``<prefix>:chaos:exec``).
EXEC_LOG = "chaos:exec"
_LOG_PATIENCE = 30.0  # seconds a handler keeps trying to log while Redis is away

_client: aioredis.Redis | None = None
_lock = asyncio.Lock()
_gate = asyncio.Semaphore(16)  # bounded log connections per process


class Job(BaseModel):
    """`key` is the client's request key (the checker maps store records back to requests)."""

    key: str
    ms: int = 0
    blob: str = ""  # padding, to fill memory (scenario 10)


async def _redis() -> aioredis.Redis:
    global _client
    async with _lock:
        if _client is None:
            assert app.settings.redis_url is not None
            _client = await ready_client(app.settings.redis_url, timeout=2, max_connections=64)
        return _client


async def log(kind: str, ctx: TaskContext) -> None:
    """Append one line to the execution log, retrying while Redis is away (bounded)."""
    line = f"{kind}|{ctx.task_id}|{ctx.attempt}|{os.getpid()}|{time.time():.6f}"
    key = f"{app.settings.prefix}:{EXEC_LOG}"
    deadline = time.monotonic() + _LOG_PATIENCE
    async with _gate:
        while True:
            try:
                await (await _redis()).rpush(key, line)
                return
            except (OSError, aioredis.RedisError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


@app.task(max_retries=3)
async def work(payload: Job, ctx: TaskContext) -> dict[str, int | str]:
    """The ordinary task: log, sleep `ms`, log, return."""
    await log("S", ctx)
    if payload.ms:
        await asyncio.sleep(payload.ms / 1000)
    await log("E", ctx)
    return {"key": payload.key, "attempt": ctx.attempt}


LIMIT = 3


@app.task(max_retries=3, concurrency=LIMIT)
async def limited(payload: Job, ctx: TaskContext) -> dict[str, int | str]:
    """`work` under a concurrency limit of `LIMIT` across every worker (scenario 15)."""
    return await work(payload, ctx)


@app.task(max_retries=3)
async def quiet(payload: Job) -> str:
    """Writes no execution log: for a Redis too full to take the log's writes (scenario 10)."""
    return payload.key


@app.task(max_retries=1)
async def crash(payload: Job, ctx: TaskContext) -> None:
    """Kills its whole worker process, on every attempt (scenario 3)."""
    await log("S", ctx)
    os._exit(1)


@app.task(max_retries=2, retry_base=0.02, retry_cap=0.1)
async def fail(payload: Job, ctx: TaskContext) -> None:
    """Raises on every attempt: three runs, then the dead letters (scenario 4)."""
    await log("S", ctx)
    await log("E", ctx)
    raise RuntimeError(f"fail {payload.key} [on purpose]")


@app.task(max_retries=3, timeout=600)
async def slow(payload: Job, ctx: TaskContext) -> str:
    """Runs longer than the visibility timeout (scenario 5)."""
    await log("S", ctx)
    await asyncio.sleep(payload.ms / 1000)
    await log("E", ctx)
    return payload.key


def _disable_renewal() -> None:
    from spillway.worker import Worker

    async def no_renewal(self: Worker) -> None:
        return None

    async def no_reclaim(self: Worker, cursors: object) -> None:
        return None

    Worker._renew = no_renewal  # type: ignore[method-assign]
    Worker._reclaim = no_reclaim  # type: ignore[method-assign]


if os.environ.get("CHAOS_NO_RENEW") == "1":
    _disable_renewal()


def _dump_tasks(signum: int, frame: object) -> None:
    """Print every asyncio task's stack to the process log: where a stuck worker waits.

    The harness sends SIGUSR1 to the workers when a drain times out (`Stack.drain`).
    """
    try:
        loop = asyncio.get_running_loop()  # the handler runs inside the loop's thread
    except RuntimeError:
        return
    print(f"--- asyncio tasks of pid {os.getpid()} ---", file=sys.stderr)
    for task in asyncio.all_tasks(loop):
        task.print_stack(limit=12, file=sys.stderr)
    print("--- end of tasks ---", file=sys.stderr, flush=True)


signal.signal(signal.SIGUSR1, _dump_tasks)
