"""Scale-out on a local Redis Cluster: 1, 2 and 3 shards over 3 primaries.

For each shard count, 30,000 no-op tasks are enqueued (``enqueue_many``) and then drained by
as many worker processes as there are shards. Besides tasks/s, the run reads each primary's
CPU time (``INFO cpu``) before and after, which gives the two figures the capacity model in
``docs/scaling.md`` is built on: Redis CPU per task (accept, and run-to-outcome) and how the
load spreads over the primaries. Everything runs on this one machine, so the cluster, the
producer and the workers share its cores: read the spread and the per-task costs, not the
absolute rates, as what carries over to real hardware.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from tests.embedded_cluster import EmbeddedCluster

from bench import ROOT, Report, machine
from spillway import Settings
from spillway.embedded import find_redis_server

__all__ = ["run"]

TASKS = 30_000
BATCH = 1_000
CONCURRENCY = 200
TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class Step:
    shards: int
    enqueue_rate: float
    drain_rate: float
    accept_cpu_us: float  # Redis CPU per task while enqueueing, summed over primaries
    run_cpu_us: float  # Redis CPU per task while draining (read, begin, finish)
    spread: list[float]  # share of the drain's Redis CPU on each primary
    bytes_per_task: float  # Redis memory per queued task, summed over primaries


def _cpu(cluster: EmbeddedCluster) -> list[float]:
    out = []
    for node in cluster.primary_nodes():
        with cluster.client(node) as c:
            info = c.info("cpu")
            out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


def _memory(cluster: EmbeddedCluster) -> int:
    total = 0
    for node in cluster.primary_nodes():
        with cluster.client(node) as c:
            total += int(c.info("memory")["used_memory"])
    return total


async def _enqueue(settings: Settings) -> float:
    from bench.drain import build_app

    app = build_app(settings)
    async with app:
        started = time.perf_counter()
        for start in range(0, TASKS, BATCH):
            results = await app.enqueue_many([("noop", i) for i in range(start, start + BATCH)])
            if not all(r.ok for r in results):
                raise RuntimeError(f"enqueue refused: {next(r for r in results if not r.ok)}")
        return TASKS / (time.perf_counter() - started)


def _drain(env: dict[str, str], workers: int) -> float:
    command = [
        sys.executable, "-m", "spillway", "worker", "bench.drain:app", "--burst",
        "--concurrency", str(CONCURRENCY), "--log-level", "warning",
    ]  # fmt: skip
    started = time.perf_counter()
    procs = [subprocess.Popen(command, env=env, cwd=ROOT) for _ in range(workers)]  # noqa: S603
    try:
        for p in procs:
            if p.wait(TIMEOUT) != 0:
                raise RuntimeError(f"a worker exited with {p.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return TASKS / (time.perf_counter() - started)


def _check_drained(cluster: EmbeddedCluster, prefix: str) -> None:
    for node in cluster.primary_nodes():
        with cluster.client(node) as c:
            for key in c.scan_iter(match=f"{prefix}:*:stream", count=1000):
                if c.xlen(key):
                    raise RuntimeError(f"{key} still holds entries after the drain")


def step(cluster: EmbeddedCluster, shards: int) -> Step:
    prefix = f"bench-scale-{shards}"
    settings = Settings(redis_url=cluster.url, prefix=prefix, shards=shards, backlog_limit=10**7)
    env = dict(os.environ, SPILLWAY_REDIS_URL=cluster.url, SPILLWAY_PREFIX=prefix,
               SPILLWAY_SHARDS=str(shards), SPILLWAY_BACKLOG_LIMIT=str(10**7))  # fmt: skip
    before, memory_before = _cpu(cluster), _memory(cluster)
    enqueue_rate = asyncio.run(_enqueue(settings))
    middle, memory_queued = _cpu(cluster), _memory(cluster)
    drain_rate = _drain(env, workers=shards)
    after = _cpu(cluster)
    _check_drained(cluster, prefix)
    drain_cpu = [b - a for a, b in zip(middle, after, strict=True)]
    total = sum(drain_cpu) or 1.0
    return Step(
        shards=shards,
        enqueue_rate=enqueue_rate,
        drain_rate=drain_rate,
        accept_cpu_us=1e6 * sum(b - a for a, b in zip(before, middle, strict=True)) / TASKS,
        run_cpu_us=1e6 * total / TASKS,
        spread=[c / total for c in drain_cpu],
        bytes_per_task=(memory_queued - memory_before) / TASKS,
    )


def run() -> Report:
    steps = []
    with EmbeddedCluster(primaries=3) as cluster:
        for shards in (1, 2, 3):
            print(f"  {shards} shard(s): enqueue {TASKS} tasks, drain with {shards} worker(s)")
            steps.append(step(cluster, shards))
    rows = "\n".join(
        f"| {s.shards} | {s.shards} | {s.enqueue_rate:,.0f} | {s.drain_rate:,.0f} | "
        f"{s.accept_cpu_us:.1f} | {s.run_cpu_us:.1f} | {s.bytes_per_task:,.0f} | "
        f"{' / '.join(f'{p:.0%}' for p in s.spread)} |"
        for s in steps
    )
    header = (
        "| shards | worker processes | enqueue tasks/s | drain tasks/s "
        "| Redis CPU per accept (us) | Redis CPU per run (us) "
        "| Redis memory per queued task (B) | drain CPU share per primary |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    where = machine(find_redis_server())
    markdown = f"""Command: `.venv/bin/python -m bench.run scaling` ({where}).
A local Redis Cluster of 3 primaries on this machine; {TASKS:,} no-op tasks per step,
enqueued with `enqueue_many` by one producer, drained by one `spillway worker --burst`
process per shard (concurrency {CONCURRENCY}).

{header}
{rows}

All shards and processes share this machine's 2 cores, so rates cannot grow with shards here;
what carries over is the Redis CPU per task and the spread of the load over the primaries
(one shard keeps one primary busy; three shards spread it over all three). See
`docs/scaling.md` for the capacity model built on these figures."""
    best = max(steps, key=lambda s: s.drain_rate)
    summary = (
        f"scaling: {', '.join(f'{s.shards} shard(s) {s.drain_rate:,.0f}/s' for s in steps)}; "
        f"Redis CPU per task: accept {steps[-1].accept_cpu_us:.1f} us, run "
        f"{steps[-1].run_cpu_us:.1f} us (best drain {best.drain_rate:,.0f}/s)"
    )
    return Report("Scale-out on a local Redis Cluster", summary, markdown)


if __name__ == "__main__":
    print(run().markdown)
