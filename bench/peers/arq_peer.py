"""arq, as its docs show it: coroutine functions, `WorkerSettings`, `create_pool().enqueue_job`.

Worker: ``arq bench.peers.arq_peer.WorkerSettings``, ``max_jobs`` from ``BENCH_CONCURRENCY``,
results not kept (``keep_result = 0``). arq has no batch enqueue. arq >= 0.26 pins redis-py < 6,
which Spillway's redis-py >= 7 excludes, so the bench group resolves arq 0.25.0, the newest arq
that installs beside it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

from bench.peers.driver import Clock, Enqueuer, Workload, in_flight
from bench.peers.probe import Probe

PROBE = Probe.from_env()
REDIS = RedisSettings.from_dsn(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


async def noop(ctx: dict[str, Any]) -> None:
    PROBE.end()


async def sleep(ctx: dict[str, Any]) -> None:
    PROBE.begin()
    await asyncio.sleep(0.5)
    PROBE.end()


class WorkerSettings:
    functions = (noop, sleep)
    redis_settings = REDIS
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "100"))
    keep_result = 0


async def sequential(workload: Workload, n: int, clock: Clock) -> None:
    pool = await create_pool(REDIS)
    with clock.timing():
        for _ in range(n):
            await pool.enqueue_job(workload)
    await pool.aclose()


async def concurrent(workload: Workload, n: int, clock: Clock) -> None:
    pool = await create_pool(REDIS)
    with clock.timing():
        await in_flight(lambda: pool.enqueue_job(workload), n)
    await pool.aclose()


MODES: dict[str, Enqueuer] = {"sequential": sequential, "concurrent": concurrent}
