"""streaq, as its docs show it: a `Worker`, `@worker.task`, `task.enqueue()`, `enqueue_many`.

Worker: ``streaq run bench.peers.streaq_peer:worker``, ``concurrency`` from
``BENCH_CONCURRENCY``, results not stored (``ttl=0``).
"""

from __future__ import annotations

import asyncio
import os

from streaq import Worker

from bench.peers.driver import Clock, Enqueuer, Workload, batches, in_flight
from bench.peers.probe import Probe

PROBE = Probe.from_env()
worker = Worker(
    redis_url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    concurrency=int(os.environ.get("BENCH_CONCURRENCY", "100")),
)


@worker.task(ttl=0)
async def noop() -> None:
    PROBE.end()


@worker.task(ttl=0)
async def sleep() -> None:
    PROBE.begin()
    await asyncio.sleep(0.5)
    PROBE.end()


TASKS = {"noop": noop, "sleep": sleep}


async def sequential(workload: Workload, n: int, clock: Clock) -> None:
    task = TASKS[workload]
    async with worker:
        with clock.timing():
            for _ in range(n):
                await task.enqueue()


async def concurrent(workload: Workload, n: int, clock: Clock) -> None:
    task = TASKS[workload]

    async def one() -> None:
        await task.enqueue()

    async with worker:
        with clock.timing():
            await in_flight(one, n)


async def batched(workload: Workload, n: int, clock: Clock) -> None:
    task = TASKS[workload]
    async with worker:
        with clock.timing():
            for size in batches(n):
                await worker.enqueue_many([task.enqueue() for _ in range(size)])


MODES: dict[str, Enqueuer] = {
    "sequential": sequential,
    "concurrent": concurrent,
    "batched": batched,
}
