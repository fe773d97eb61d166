"""taskiq with taskiq-redis's `RedisStreamBroker`, as their docs show: `@broker.task`, `.kiq()`.

Worker: ``taskiq worker bench.peers.taskiq_peer:broker --workers 1 --max-async-tasks N``
(taskiq's CLI runs the worker as a child of a small supervising process). No result backend is
configured, taskiq's default, so results are not stored. taskiq has no batch enqueue.
"""

from __future__ import annotations

import asyncio
import os

from taskiq_redis import RedisStreamBroker

from bench.peers.driver import Clock, Enqueuer, Workload, in_flight
from bench.peers.probe import Probe

PROBE = Probe.from_env()
broker = RedisStreamBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


@broker.task(task_name="noop")
async def noop() -> None:
    PROBE.end()


@broker.task(task_name="sleep")
async def sleep() -> None:
    PROBE.begin()
    await asyncio.sleep(0.5)
    PROBE.end()


TASKS = {"noop": noop, "sleep": sleep}


async def sequential(workload: Workload, n: int, clock: Clock) -> None:
    task = TASKS[workload]
    await broker.startup()  # creates the consumer group, so tasks sent before the worker count
    with clock.timing():
        for _ in range(n):
            await task.kiq()
    await broker.shutdown()


async def concurrent(workload: Workload, n: int, clock: Clock) -> None:
    task = TASKS[workload]
    await broker.startup()
    with clock.timing():
        await in_flight(task.kiq, n)
    await broker.shutdown()


MODES: dict[str, Enqueuer] = {"sequential": sequential, "concurrent": concurrent}
