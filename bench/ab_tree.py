"""What `bench.ab` runs inside one tree's processes: the enqueue producer and the drain check.

    python -P bench/ab_tree.py where
    python -P bench/ab_tree.py enqueue REDIS_URL TASKS IDS_FILE
    python -P bench/ab_tree.py verify REDIS_URL IDS_FILE
    python -P bench/ab_tree.py sequential REDIS_URL TASKS
    python -P bench/ab_tree.py batches REDIS_URL TASKS

`bench.ab` starts it with ``PYTHONPATH=<tree>/src:<tree>`` and the tree as working directory,
so `spillway` and `bench.drain` (its no-op task) are the tree's own; ``-P`` keeps this file's
directory (which holds a package named ``http``) off ``sys.path``. It imports nothing else from
the tree's ``bench`` and only the public API of `spillway`, which both trees share. Each
command prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import spillway
from bench.drain import PREFIX, build_app
from spillway import Settings, TaskRecord, TaskStatus

BATCH = 1_000  # enqueue_many items per call, as bench.drain enqueues
READS = 100  # task records read at once by `verify`
# The sequential enqueues go under a prefix of their own: the drain's worker never sees them.
SEQUENTIAL_PREFIX = "bench-ab-sequential"


def where() -> dict[str, Any]:
    """Which `spillway` and which `bench.drain` this process imported."""
    import bench.drain

    return {"spillway": spillway.__file__, "bench.drain": bench.drain.__file__}


async def enqueue(redis_url: str, tasks: int) -> tuple[dict[str, Any], list[str]]:
    """`enqueue_many` of `tasks` no-op tasks for the drain, then `tasks` awaited `enqueue`s."""
    drained = build_app(Settings(redis_url=redis_url, prefix=PREFIX))
    sequential = build_app(Settings(redis_url=redis_url, prefix=SEQUENTIAL_PREFIX))
    async with drained, sequential:
        await drained.connect()
        await sequential.connect()
        ids: list[str] = []
        started = time.perf_counter()
        for first in range(0, tasks, BATCH):
            items = [("noop", i) for i in range(first, min(first + BATCH, tasks))]
            results = await drained.enqueue_many(items)
            refused = [r.error for r in results if not r.ok]
            if refused:
                raise RuntimeError(f"{len(refused)} tasks refused: {refused[0]}")
            ids += [r.task_id for r in results if r.task_id]
        many_s = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(tasks):
            await sequential.enqueue("noop", i)
        one_by_one_s = time.perf_counter() - started
    return {**where(), "enqueue_many_s": many_s, "enqueue_s": one_by_one_s}, ids


async def sequential(redis_url: str, tasks: int) -> dict[str, Any]:
    """Only the awaited `enqueue`s, after 500 to warm up: calls a second and CPU per call.

    The A/B's noisiest figure, run alone to check a miss (each tree in turn, by hand)."""
    prefix = f"{SEQUENTIAL_PREFIX}-{time.time_ns()}"
    async with build_app(Settings(redis_url=redis_url, prefix=prefix)) as app:
        await app.connect()
        for i in range(500):
            await app.enqueue("noop", i)
        cpu, started = time.process_time(), time.perf_counter()
        for i in range(tasks):
            await app.enqueue("noop", i)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return {**where(), "per_s": tasks / wall, "cpu_us": cpu / tasks * 1e6}


async def batches(redis_url: str, tasks: int) -> dict[str, Any]:
    """Only `enqueue_many` (1,000 a call, after one call to warm up): tasks a second, CPU per
    task, and Redis's own microseconds per `evalsha` (`INFO commandstats`: use a fresh
    redis-server per run)."""
    prefix = f"{SEQUENTIAL_PREFIX}-{time.time_ns()}"
    async with build_app(Settings(redis_url=redis_url, prefix=prefix)) as app:
        await app.connect()
        await app.enqueue_many([("noop", i) for i in range(BATCH)])
        cpu, started = time.process_time(), time.perf_counter()
        for first in range(0, tasks, BATCH):
            await app.enqueue_many([("noop", i) for i in range(first, first + BATCH)])
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        stats = await app.broker.client.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {}).get("usec_per_call")
    return {**where(), "per_s": tasks / wall, "cpu_us": cpu / tasks * 1e6, "evalsha_us": evalsha}


async def verify(redis_url: str, ids: list[str]) -> dict[str, Any]:
    """Check every drained task succeeded and nothing is left; first start to last finish."""
    async with build_app(Settings(redis_url=redis_url, prefix=PREFIX)) as app:
        records: list[TaskRecord] = []
        # 100 reads at a time: 1,000 outwait the connection pool's timeout on a busy machine.
        for first in range(0, len(ids), READS):
            records += await asyncio.gather(*(app.get(i) for i in ids[first : first + READS]))
        stats = await app.stats()
    wrong = [r for r in records if r.status is not TaskStatus.SUCCEEDED]
    if wrong:
        raise RuntimeError(f"{len(wrong)} of {len(records)} tasks did not succeed: {wrong[:1]}")
    left = [q for q in stats.queues if q.backlog or q.pending or q.delayed or q.dead]
    if left:
        raise RuntimeError(f"tasks left behind: {left}")
    starts = [r.started_at for r in records if r.started_at]
    finishes = [r.finished_at for r in records if r.finished_at]
    return {"span_s": (max(finishes) - min(starts)).total_seconds(), "tasks": len(records)}


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "where":
        result = where()
    elif command == "enqueue":
        result, ids = asyncio.run(enqueue(rest[0], int(rest[1])))
        Path(rest[2]).write_text("\n".join(ids))
    elif command == "batches":
        result = asyncio.run(batches(rest[0], int(rest[1])))
    elif command == "sequential":
        result = asyncio.run(sequential(rest[0], int(rest[1])))
    elif command == "verify":
        result = asyncio.run(verify(rest[0], Path(rest[1]).read_text().split()))
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
