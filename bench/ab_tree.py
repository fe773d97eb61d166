"""What `bench.ab` runs inside one tree's processes: the enqueue producer and the drain check.

    python -P bench/ab_tree.py where
    python -P bench/ab_tree.py enqueue REDIS_URL TASKS IDS_FILE
    python -P bench/ab_tree.py verify REDIS_URL IDS_FILE

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
    elif command == "verify":
        result = asyncio.run(verify(rest[0], Path(rest[1]).read_text().split()))
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
