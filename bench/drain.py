"""Worker drain: how fast ONE worker process empties a queue of no-op tasks.

20,000 tasks are enqueued first (``enqueue_many``, batches of 1,000), then one
``spillway worker bench.drain:app --burst`` process drains them. The figure is tasks per
second from the first task's start to the last task's finish, read from the task records;
the burst process's wall time (start-up included) is reported beside it. Every task must end
``succeeded`` and the stream must be empty, or the benchmark fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from bench import ROOT, Report, machine
from spillway import Settings, Spillway, TaskRecord, TaskStatus
from spillway.embedded import EmbeddedRedis

__all__ = ["app", "build_app", "run"]

TASKS = 20_000
BATCH = 1_000
CONCURRENCY = 200
DRAIN_TIMEOUT = 300.0
APP = "bench.drain:app"
PREFIX = "bench-drain"


def build_app(settings: Settings | None = None) -> Spillway:
    """An application with one no-op task."""
    application = Spillway(settings)

    @application.task
    async def noop(payload: int) -> None:
        return None

    return application


app = build_app()


def worker_command() -> list[str]:
    return [
        sys.executable, "-m", "spillway", "worker", APP,
        "--burst", "--concurrency", str(CONCURRENCY), "--log-level", "warning",
    ]  # fmt: skip


def _drain(env: dict[str, str]) -> float:
    started = time.perf_counter()
    worker = subprocess.Popen(worker_command(), env=env, cwd=ROOT)  # noqa: S603 - our own argv
    try:
        code = worker.wait(DRAIN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"the worker did not drain {TASKS} tasks in {DRAIN_TIMEOUT:g} s"
        ) from None
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    if code != 0:
        raise RuntimeError(f"the worker exited with code {code}")
    return time.perf_counter() - started


def run() -> Report:
    """Enqueue, drain with one worker process, verify, and report tasks/s."""
    with EmbeddedRedis(appendonly=True) as redis:
        settings = Settings(redis_url=redis.url, prefix=PREFIX)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
        env |= {"SPILLWAY_REDIS_URL": redis.url, "SPILLWAY_PREFIX": PREFIX}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )

        async def enqueue() -> tuple[float, list[str]]:
            async with build_app(settings) as bench:
                ids: list[str] = []
                started = time.perf_counter()
                for first in range(0, TASKS, BATCH):
                    items = [("noop", i) for i in range(first, first + BATCH)]
                    results = await bench.enqueue_many(items)
                    refused = [r.error for r in results if not r.ok]
                    if refused:
                        raise RuntimeError(f"{len(refused)} tasks refused: {refused[0]}")
                    ids += [r.task_id for r in results if r.task_id]
                return time.perf_counter() - started, ids

        enqueue_s, ids = asyncio.run(enqueue())
        wall_s = _drain(env)
        span_s = asyncio.run(_verify(settings, ids))
        where = machine(redis.binary)

    rate = TASKS / span_s
    summary = (
        f"drained {TASKS:,} no-op tasks with one worker process: {rate:,.0f} tasks/s "
        f"(first start to last finish {span_s:.2f} s; burst process wall time {wall_s:.2f} s; "
        f"enqueue {TASKS / enqueue_s:,.0f} tasks/s)"
    )
    markdown = f"""\
{TASKS:,} no-op tasks are enqueued first (`enqueue_many`, batches of {BATCH:,}), then ONE worker
process drains them in burst mode. The figure is tasks per second from the first task's start to
the last task's finish (from the task records); every task is checked to have ended `succeeded`
and the stream to be empty.

| measure | value |
| --- | ---: |
| **drain, one worker process** | **{rate:,.0f} tasks/s** |
| first start to last finish | {span_s:.2f} s |
| burst process wall time (start-up included) | {wall_s:.2f} s |
| enqueue (`enqueue_many`, {BATCH:,} per call) | {TASKS / enqueue_s:,.0f} tasks/s |

- Command: `make bench` (`.venv/bin/python -m bench.run drain`); the worker is
  `{" ".join(["python", *worker_command()[1:]])}`.
- Redis: the embedded throw-away server on loopback, AOF on (`appendfsync everysec`).
- Measured: {where}.
"""
    return Report(title="Worker drain", summary=summary, markdown=markdown)


async def _verify(settings: Settings, ids: list[str]) -> float:
    """Check every task succeeded and nothing is left; returns first start to last finish (s)."""
    async with build_app(settings) as bench:
        records: list[TaskRecord] = []
        for first in range(0, len(ids), BATCH):
            records += await asyncio.gather(*(bench.get(i) for i in ids[first : first + BATCH]))
        stats = await bench.stats()
    wrong = [r for r in records if r.status is not TaskStatus.SUCCEEDED]
    if len(records) != TASKS or wrong:
        raise RuntimeError(f"{len(wrong)} of {len(records)} tasks did not succeed: {wrong[:1]}")
    left = [q for q in stats.queues if q.backlog or q.pending or q.delayed or q.dead]
    if left:
        raise RuntimeError(f"tasks left behind: {left}")
    starts = [r.started_at for r in records if r.started_at]
    finishes = [r.finished_at for r in records if r.finished_at]
    return (max(finishes) - min(starts)).total_seconds()
