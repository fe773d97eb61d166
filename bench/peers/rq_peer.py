"""RQ, as its docs show it: plain functions, `Queue.enqueue`, `Queue.enqueue_many`.

Worker: ``rq worker --worker-class rq.worker.SimpleWorker`` (no fork per job, RQ's fastest
single-process worker); it runs one job at a time, so the sleep workload (2,000 x 0.5 s >=
1,000 s) is not run. Jobs are enqueued with ``result_ttl=0``: results are not kept.
"""

from __future__ import annotations

import os
import time

from redis import Redis
from rq import Queue

from bench.peers.driver import Clock, Enqueuer, Workload, batches
from bench.peers.probe import Probe

PROBE = Probe.from_env()
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def noop() -> None:
    PROBE.end()


def sleep() -> None:
    PROBE.begin()
    time.sleep(0.5)
    PROBE.end()


FUNCTIONS = {"noop": noop, "sleep": sleep}


def sequential(workload: Workload, n: int, clock: Clock) -> None:
    queue = Queue(connection=Redis.from_url(URL))
    fn = FUNCTIONS[workload]
    with clock.timing():
        for _ in range(n):
            queue.enqueue(fn, result_ttl=0)


def batched(workload: Workload, n: int, clock: Clock) -> None:
    queue = Queue(connection=Redis.from_url(URL))
    fn = FUNCTIONS[workload]
    with clock.timing():
        for size in batches(n):
            queue.enqueue_many([Queue.prepare_data(fn, result_ttl=0) for _ in range(size)])


MODES: dict[str, Enqueuer] = {"sequential": sequential, "batched": batched}
