"""Limits and priorities: what a concurrency limit costs, and how soon a high task starts.

    python -m bench.run limits

In one run, on one throw-away Redis (AOF on):

- drain: ONE burst worker process (concurrency 200) drains 20,000 short tasks (each awaits
  1 ms, a database call's share) of an unlimited type, then 20,000 of a type declared with
  ``concurrency=50``, alternating, `ROUNDS` times; the ratio of the limited rate to the
  unlimited one is taken within each round. A concurrency of 50 allows 50 runs of 1 ms at
  once, 50,000/s in principle, far above one worker's rate, so the ratio is the cost of taking
  and giving back slots (the goal: >= 0.5x).
- priority: 100,000 low-priority no-op tasks are queued, a worker (concurrency 50) starts
  draining them, then one high-priority task is enqueued; its start latency (its record's
  ``started_at`` minus ``created_at``, both Redis times) is measured `ROUNDS` times.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time

from bench import ROOT, Report, machine
from spillway import Settings, Spillway, TaskStatus
from spillway.embedded import EmbeddedRedis

__all__ = ["app", "build_app", "run"]

TASKS = 20_000
BACKLOG = 100_000
BATCH = 1_000
ROUNDS = 3
CONCURRENCY = 200
LIMIT = 50
APP = "bench.limits:app"
TIMEOUT = 300.0


def build_app(settings: Settings | None = None) -> Spillway:
    """Short tasks without and with a concurrency limit, and two priorities of no-ops."""
    application = Spillway(settings)

    @application.task
    async def free(payload: int) -> None:
        await asyncio.sleep(0.001)

    @application.task(concurrency=LIMIT)
    async def limited(payload: int) -> None:
        await asyncio.sleep(0.001)

    @application.task(priority="low")
    async def bulk(payload: int) -> None:
        return None

    @application.task
    async def urgent(payload: int) -> None:
        return None

    return application


app = build_app()


def _env(url: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
    env |= {"SPILLWAY_REDIS_URL": url, "SPILLWAY_PREFIX": prefix}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "spillway", "worker", APP, "--log-level", "warning", *args]
    return subprocess.Popen(argv, env=env, cwd=ROOT)  # noqa: S603 - our own argv


async def _enqueue(bench: Spillway, task_type: str, count: int) -> list[str]:
    ids: list[str] = []
    for first in range(0, count, BATCH):
        results = await bench.enqueue_many(
            [(task_type, i) for i in range(first, min(count, first + BATCH))]
        )
        refused = [r.error for r in results if not r.ok]
        if refused:
            raise RuntimeError(f"{len(refused)} tasks refused: {refused[0]}")
        ids += [r.task_id for r in results if r.task_id]
    return ids


async def _span(bench: Spillway, ids: list[str]) -> float:
    """First start to last finish of these tasks (s); every one must have succeeded."""
    starts, finishes = [], []
    for first in range(0, len(ids), BATCH):
        for r in await asyncio.gather(*(bench.get(i) for i in ids[first : first + BATCH])):
            if r.status is not TaskStatus.SUCCEEDED or not r.started_at or not r.finished_at:
                raise RuntimeError(f"task {r.id} ended {r.status}")
            starts.append(r.started_at)
            finishes.append(r.finished_at)
    return (max(finishes) - min(starts)).total_seconds()


def _drain(url: str, prefix: str, task_type: str) -> float:
    """Tasks/s of one burst worker process draining `TASKS` tasks of `task_type`."""

    async def enqueue() -> list[str]:
        async with build_app(Settings(redis_url=url, prefix=prefix)) as bench:
            return await _enqueue(bench, task_type, TASKS)

    ids = asyncio.run(enqueue())
    worker = _worker(_env(url, prefix), "--burst", "--concurrency", str(CONCURRENCY))
    try:
        if worker.wait(TIMEOUT) != 0:
            raise RuntimeError(f"the {task_type} worker failed")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    async def span() -> float:
        async with build_app(Settings(redis_url=url, prefix=prefix)) as bench:
            return await _span(bench, ids)

    return TASKS / asyncio.run(span())


def _priority_latency(url: str, prefix: str) -> float:
    """Seconds from accept to start of a high task enqueued behind `BACKLOG` low ones."""
    settings = Settings(redis_url=url, prefix=prefix)

    async def fill() -> None:
        async with build_app(settings) as bench:
            await _enqueue(bench, "bulk", BACKLOG)

    asyncio.run(fill())
    worker = _worker(_env(url, prefix), "--concurrency", "50")
    try:

        async def measure() -> float:
            async with build_app(settings) as bench:
                # Wait until the worker is draining the low backlog, then jump it.
                deadline = time.monotonic() + 60
                while (await bench.stats()).counts.get("bulk", {}).get("succeeded", 0) < 1_000:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the worker did not start")
                    await asyncio.sleep(0.05)
                task_id = await bench.enqueue("urgent", 0, priority="high")
                record = await bench.wait(task_id, 30)
                left = sum(q.backlog for q in (await bench.stats()).queues)
                if record.started_at is None or record.created_at is None or left < BACKLOG / 10:
                    raise RuntimeError(f"not measured behind a backlog ({left} left)")
                return (record.started_at - record.created_at).total_seconds()

        return asyncio.run(measure())
    finally:
        worker.terminate()
        worker.wait(30)


def run() -> Report:
    rounds: list[tuple[float, float]] = []
    latencies: list[float] = []
    with EmbeddedRedis(appendonly=True) as redis:
        for n in range(ROUNDS):
            order = ("free", "limited") if n % 2 == 0 else ("limited", "free")
            rates = {t: _drain(redis.url, f"bench-limits-{n}-{t}", t) for t in order}
            rounds.append((rates["free"], rates["limited"]))
            latencies.append(_priority_latency(redis.url, f"bench-priority-{n}"))
        where = machine(redis.binary)
    ratios = [limited / free for free, limited in rounds]
    ratio = statistics.median(ratios)
    latency_ms = statistics.median(latencies) * 1000
    summary = (
        f"concurrency={LIMIT} drains at {ratio:.2f}x the unlimited rate (goal >= 0.5x); a high "
        f"task behind {BACKLOG:,} low ones starts {latency_ms:.1f} ms after its accept (median)"
    )
    rows = "\n".join(
        f"| {i + 1} | {free:,.0f} | {limited:,.0f} | {limited / free:.2f} | {lat * 1000:.1f} ms |"
        for i, ((free, limited), lat) in enumerate(zip(rounds, latencies, strict=True))
    )
    header = (
        f"| round | unlimited, tasks/s | `concurrency={LIMIT}`, tasks/s | limited / unlimited "
        "| high task's start latency |\n| ---: | ---: | ---: | ---: | ---: |"
    )
    markdown = f"""\
One burst worker process (concurrency {CONCURRENCY}) drains {TASKS:,} tasks that each await
1 ms, of a type without limits and of one declared `concurrency={LIMIT}`, alternating which
goes first each round; the ratio is taken within each round. Then {BACKLOG:,} low-priority
no-ops are queued, a worker (concurrency 50) drains them, and one `priority="high"` task is
enqueued once 1,000 have run: its start latency is its record's `started_at - created_at`
(Redis times).

{header}
{rows}

- **Limited / unlimited: {ratio:.2f}x** (median of {ROUNDS}; min {min(ratios):.2f}, max
  {max(ratios):.2f}); the goal is >= 0.5x.
- **High-priority start latency behind {BACKLOG:,} low tasks: {latency_ms:.1f} ms** (median;
  min {min(latencies) * 1000:.1f}, max {max(latencies) * 1000:.1f}).
- Command: `make bench` (`.venv/bin/python -m bench.run limits`).
- Redis: the embedded throw-away server on loopback, AOF on (`appendfsync everysec`).
- Measured: {where}.
"""
    return Report(title="Limits and priorities", summary=summary, markdown=markdown)
