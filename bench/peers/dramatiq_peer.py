"""Dramatiq with its Redis broker, as its docs show it: `@dramatiq.actor`, `actor.send()`.

Worker: ``dramatiq bench.peers.dramatiq_peer --processes 1 --threads N``. Dramatiq is
synchronous: the sleep workload sleeps in 500 worker threads. No Results middleware, its
default, so results are not stored. Dramatiq has no batch enqueue (a group sends one by one).
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers.driver import Clock, Enqueuer, Workload
from bench.peers.probe import Probe

PROBE = Probe.from_env()
broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop")
def noop() -> None:
    PROBE.end()


@dramatiq.actor(actor_name="sleep")
def sleep() -> None:
    PROBE.begin()
    time.sleep(0.5)
    PROBE.end()


ACTORS = {"noop": noop, "sleep": sleep}


def sequential(workload: Workload, n: int, clock: Clock) -> None:
    actor = ACTORS[workload]
    with clock.timing():
        for _ in range(n):
            actor.send()
    broker.close()


MODES: dict[str, Enqueuer] = {"sequential": sequential}
