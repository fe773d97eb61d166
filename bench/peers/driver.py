"""What every peer module's producer side is made of.

A peer module maps mode names to enqueuers in ``MODES``. Each enqueuer connects, enqueues N
tasks of a workload inside ``clock.timing()`` (so connecting is not timed) and disconnects;
``bench.peers.produce`` runs one in its own process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Literal

__all__ = ["IN_FLIGHT", "Clock", "Enqueuer", "Workload", "batches", "in_flight"]

Workload = Literal["noop", "sleep"]
IN_FLIGHT = 100
"""Concurrent enqueues in flight: the size of redis-py 8's default asyncio pool, which raises
past it instead of waiting; every async peer gets the same bound."""
BATCH = 1000


class Clock:
    """Times the part of an enqueuer that counts."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.extra: dict[str, object] = {}  # anything else worth reporting

    @contextmanager
    def timing(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds = time.perf_counter() - start


Enqueuer = Callable[[Workload, int, Clock], Awaitable[None] | None]


async def in_flight(make: Callable[[], Awaitable[object]], n: int, limit: int = IN_FLIGHT) -> None:
    """Await `n` calls of `make()`, `limit` at a time (asyncio.gather in waves)."""
    for done in range(0, n, limit):
        await asyncio.gather(*(make() for _ in range(min(limit, n - done))))


def batches(n: int, size: int = BATCH) -> Iterator[int]:
    """Sizes of the batches that make up `n` tasks."""
    for done in range(0, n, size):
        yield min(size, n - done)
