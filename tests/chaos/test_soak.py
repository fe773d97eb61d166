"""Scenario 13 of issue 5: a soak at half capacity with a worker kill every minute.

Runs only under `make soak` (SPILLWAY_SOAK_MINUTES set); bounded by that many minutes plus the
drain, on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time

import psutil
import pytest
from tests.chaos.checker import Verdict
from tests.chaos.conftest import StackFactory
from tests.chaos.load import History, drive, percentile
from tests.chaos.scenarios import conclude, finish, start

MINUTES_ENV = "SPILLWAY_SOAK_MINUTES"
RATE_ENV = "SPILLWAY_SOAK_RATE"  # half of the measured capacity of this machine


def _slope_mb_per_10min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, in MB per 10 minutes."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mr = sum(r for _, r in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    cov = sum((t - mt) * (r - mr) for t, r in samples)
    return (cov / var) * 600 / 2**20 if var else 0.0


@pytest.mark.chaos
@pytest.mark.timeout(4 * 3600)
@pytest.mark.skipif(MINUTES_ENV not in os.environ, reason="run with `make soak`")
async def test_soak_at_half_capacity_with_worker_kills(stacks: StackFactory) -> None:
    minutes = float(os.environ[MINUTES_ENV])
    rate = float(os.environ.get(RATE_ENV, "150"))
    concurrency = 8
    stack = stacks()
    run = await start(stack, apis=1, workers=2, concurrency=concurrency)
    warmup = min(120.0, minutes * 60 / 6)
    window = min(300.0, minutes * 60 / 3)
    redis_before = int((await stack.redis_client.info("memory"))["used_memory"])
    api = psutil.Process(stack.apis[run.ports[0]].pid)
    api_procs = [api, *api.children(recursive=True)]
    rss: dict[str, list[tuple[float, int]]] = {"api": [], "worker": []}
    survivor = psutil.Process(run.workers[0].pid)  # never killed: its RSS is the worker's
    rng = random.Random(13)  # noqa: S311 - a reproducible schedule, not secrets
    stop = asyncio.Event()
    kills = 0
    started = time.time()

    async def nemesis() -> None:
        nonlocal kills
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await stop.wait()
            if stop.is_set():
                return
            victims = [w for w in stack.live_workers() if w.pid != survivor.pid]
            if victims:
                await asyncio.to_thread(rng.choice(victims).kill)
                kills += 1
            stack.start_worker(concurrency)

    async def sampler() -> None:
        while not stop.is_set():
            now = time.time()
            if now - started >= warmup:
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss["api"].append((now, sum(p.memory_info().rss for p in api_procs)))
                    rss["worker"].append((now, survivor.memory_info().rss))
            await asyncio.sleep(5)

    async def timer() -> None:
        await asyncio.sleep(minutes * 60)
        stop.set()

    chores = [asyncio.create_task(c()) for c in (nemesis, sampler, timer)]
    try:
        history = await drive(
            run.urls, total=10**9, rate=rate, stop=stop, ms=lambda n: rng.randint(5, 50),
            concurrency=32,
        )  # fmt: skip
    finally:
        stop.set()
        await asyncio.gather(*chores)

    verdict = Verdict("13 soak", f"{minutes:g} min", faults=f"{kills} worker kill -9")
    verdict, _ = await conclude(verdict, stack, history, drain_timeout=300)
    await _settle(stack)
    redis_after = int((await stack.redis_client.info("memory"))["used_memory"])
    slopes = {k: round(_slope_mb_per_10min(v), 2) for k, v in rss.items()}
    verdict.notes.update(rss_slope_mb_per_10min=slopes, redis_before=redis_before,
                         redis_after=redis_after)  # fmt: skip
    for name, slope in slopes.items():
        verdict.check(f"{name} RSS slope < 1 MB / 10 min", slope < 1.0, slope)
    # Terminal records keep their results for result_ttl: what must come back is the queue.
    allowed = redis_before * 1.1 + _records_bytes(verdict)
    verdict.check("Redis memory back within 10 % after drain (records aside)",
                  redis_after <= allowed, redis_after)  # fmt: skip
    first = _p99(history, started, started + window)
    last = _p99(history, started + minutes * 60 - window, started + minutes * 60)
    verdict.notes.update(p99_first_ms=round(first * 1000), p99_last_ms=round(last * 1000))
    verdict.check("p99 of the last window <= 1.2 x the first", last <= 1.2 * first + 0.005,
                  (first, last))  # fmt: skip
    finish(verdict)


def _p99(history: History, start: float, end: float) -> float:
    return percentile([op.latency for op in history.ops if start <= op.start < end
                       and op.status == 202], 0.99)  # fmt: skip


def _records_bytes(verdict: Verdict) -> int:
    # Upper bound of what the kept task records (~400 B each) and the execution log take.
    return (verdict.tasks + int(verdict.notes.get("executions", 0))) * 600


async def _settle(stack: object) -> None:
    await asyncio.sleep(1)
