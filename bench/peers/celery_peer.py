"""Celery with a Redis broker, as its docs show it: `@app.task`, `task.delay()`, `group`.

Worker: ``celery -A bench.peers.celery_peer worker --pool solo`` for the drain (one process,
one task at a time, no pool overhead) and ``--pool threads --concurrency 500`` for the sleep
workload. No result backend is configured, Celery's default, so results are not stored.
Gossip, mingle and heartbeat are off: they are cluster chatter a lone worker does not need.
"""

from __future__ import annotations

import os
import time

from celery import Celery, group

from bench.peers.driver import Clock, Enqueuer, Workload, batches
from bench.peers.probe import Probe

PROBE = Probe.from_env()
app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.task_ignore_result = True


@app.task(name="noop")  # type: ignore[untyped-decorator]  # Celery ships no types
def noop() -> None:
    PROBE.end()


@app.task(name="sleep")  # type: ignore[untyped-decorator]
def sleep() -> None:
    PROBE.begin()
    time.sleep(0.5)
    PROBE.end()


TASKS = {"noop": noop, "sleep": sleep}


def sequential(workload: Workload, n: int, clock: Clock) -> None:
    task = TASKS[workload]
    with clock.timing():
        for _ in range(n):
            task.delay()


def batched(workload: Workload, n: int, clock: Clock) -> None:
    """A `group` is Celery's way to send many at once (it still publishes one message each)."""
    task = TASKS[workload]
    with clock.timing():
        for size in batches(n):
            group(task.s() for _ in range(size)).apply_async()


MODES: dict[str, Enqueuer] = {"sequential": sequential, "batched": batched}
