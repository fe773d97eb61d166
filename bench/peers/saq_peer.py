"""SAQ, as its docs show it: job functions taking `ctx`, a settings dict, `queue.enqueue(name)`.

Worker: ``saq bench.peers.saq_peer.settings``, ``concurrency`` from ``BENCH_CONCURRENCY``; each
job is enqueued with ``ttl=-1`` ("disabled": its record is deleted when it finishes, no result
kept). SAQ's ``batch()`` is an abort-together scope, not a batched write, so SAQ has no batch
enqueue here.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from redis.asyncio import Redis
from saq.queue.redis import RedisQueue

from bench.peers.driver import Clock, Enqueuer, Workload, in_flight
from bench.peers.probe import Probe

PROBE = Probe.from_env()
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "100"))
# What `Queue.from_url` builds, with a larger pool: each job slot holds a connection, and
# redis-py 8 caps a pool at 100 and raises past it (SAQ at 100 jobs failed with the default).
queue = RedisQueue(
    Redis.from_url(
        os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        max_connections=2 * CONCURRENCY + 100,
    )
)


async def noop(ctx: dict[str, Any]) -> None:
    PROBE.end()


async def sleep(ctx: dict[str, Any]) -> None:
    PROBE.begin()
    await asyncio.sleep(0.5)
    PROBE.end()


settings = {
    "queue": queue,
    "functions": [noop, sleep],
    "concurrency": CONCURRENCY,
}


async def sequential(workload: Workload, n: int, clock: Clock) -> None:
    await queue.connect()
    with clock.timing():
        for _ in range(n):
            await queue.enqueue(workload, ttl=-1)
    await queue.disconnect()


async def concurrent(workload: Workload, n: int, clock: Clock) -> None:
    await queue.connect()
    with clock.timing():
        await in_flight(lambda: queue.enqueue(workload, ttl=-1), n)
    await queue.disconnect()


MODES: dict[str, Enqueuer] = {"sequential": sequential, "concurrent": concurrent}
