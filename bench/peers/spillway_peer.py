"""Spillway, as its README shows it: an app with two tasks, enqueued with `enqueue`/`enqueue_many`.

The worker is ``python -m spillway worker bench.peers.spillway_peer:app --burst
--concurrency N``; the Redis address comes from ``SPILLWAY_REDIS_URL``. Spillway always stores
each task's outcome record (there is no switch to turn it off), so its figures include that
write; the peers' result storage is off where their docs make it optional.
"""

from __future__ import annotations

import asyncio
import os

from redis.asyncio import Redis

from bench.peers.driver import Clock, Enqueuer, Workload, batches, in_flight
from bench.peers.probe import Probe
from spillway import Settings, Spillway

PROBE = Probe.from_env()
app = Spillway(Settings(prefix="bench", backlog_limit=1_000_000))


@app.task
async def noop(payload: dict[str, int]) -> None:
    PROBE.end()


@app.task
async def sleep(payload: dict[str, int]) -> None:
    PROBE.begin()
    await asyncio.sleep(0.5)
    PROBE.end()


async def sequential(workload: Workload, n: int, clock: Clock) -> None:
    async with app:
        with clock.timing():
            for _ in range(n):
                await app.enqueue(workload, {})


async def concurrent(workload: Workload, n: int, clock: Clock) -> None:
    async with app:
        with clock.timing():
            await in_flight(lambda: app.enqueue(workload, {}), n)


async def batched(workload: Workload, n: int, clock: Clock) -> None:
    async with app:
        with clock.timing():
            for size in batches(n):
                results = await app.enqueue_many([(workload, {})] * size)
                if not all(r.ok for r in results):
                    raise RuntimeError(f"enqueue_many refused tasks: {results[0]}")


async def verify(workload: Workload, n: int, clock: Clock) -> None:
    """Report the outcome counts, what is left in the queue, and when outcomes were stored.

    The stored times are the records' ``finished_at`` (Redis clock, ms), so Spillway's drain
    rate can be taken up to the moment each result was written, not only the handler's return.
    """
    async with app:
        stats = await app.stats()
    clock.extra["counts"] = stats.counts.get(workload, {})
    clock.extra["left"] = sum(q.backlog + q.delayed for q in stats.queues)
    finished: list[int] = []
    client = Redis.from_url(os.environ["SPILLWAY_REDIS_URL"], decode_responses=True)
    async with client:
        keys = [key async for key in client.scan_iter(match="*:task:*", count=1000)]
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, "finished_at")
            finished = [int(ms) for ms in await pipe.execute() if ms]
    clock.extra["stored_ms"] = [min(finished), max(finished)] if finished else None


MODES: dict[str, Enqueuer] = {
    "sequential": sequential,
    "concurrent": concurrent,
    "batched": batched,
    "verify": verify,
}
