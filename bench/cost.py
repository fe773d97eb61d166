"""Cost: Redis memory per task, and CPU seconds per 10,000 tasks for the API, the worker, Redis.

    python -m bench.cost [--tasks 50000] [--rates 1000 5000] [--seconds 10] [--no-write]

Memory: `--tasks` tasks (the HTTP benchmarks' ~90-byte payload) are enqueued with
`enqueue_many` into a throw-away redis-server; Redis's ``used_memory`` before and after,
divided by the count, is the memory per queued task (record + stream entry). One burst worker
process then drains them: the memory per finished task (the record with its result, kept for
``SPILLWAY_RESULT_TTL``; the stream entry is deleted) and the worker's CPU seconds, less
those of a burst worker that found nothing to do (its start-up), per 10,000 tasks.

CPU under load: the stack of `bench.latency` (API, 2 processes; one worker; Redis) takes each
rate for `--seconds` through HTTP; the CPU seconds each used until every task was done,
per 10,000 tasks. Every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

from bench import DOC, ROOT, Report, machine, standalone
from bench.http.run import PAYLOAD, PREFIX
from bench.latency import APP, RESULTS, measure_rate, stack
from spillway import Settings, Spillway
from spillway.embedded import EmbeddedRedis

__all__ = ["TITLE", "run"]

TITLE = "Cost"
PER = 10_000
BATCH = 1_000


def _used_memory(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


async def _enqueue(url: str, tasks: int) -> None:
    from bench.http.spillway_app import app as template

    app = Spillway(Settings(redis_url=url, prefix=PREFIX, backlog_limit=10 * tasks))
    app.tasks = template.tasks
    async with app:
        for first in range(0, tasks, BATCH):
            items = [("resize", PAYLOAD)] * min(BATCH, tasks - first)
            results = await app.enqueue_many(items)
            refused = [r.error for r in results if not r.ok]
            if refused:
                raise RuntimeError(f"{len(refused)} tasks refused: {refused[0]}")


def _burst_cpu(url: str) -> float:
    """CPU seconds of one burst worker process run to its end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
    env |= {"PYTHONPATH": str(ROOT), "SPILLWAY_REDIS_URL": url, "SPILLWAY_PREFIX": PREFIX}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [sys.executable, "-m", "spillway", "worker", APP, "--burst", "--log-level", "warning"]
    worker = subprocess.Popen(command, env=env, cwd=ROOT)  # noqa: S603 - our own argv
    try:
        code = worker.wait(300)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    if code != 0:
        raise RuntimeError(f"the burst worker exited with code {code}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def memory_and_drain(tasks: int) -> dict[str, float]:
    """Bytes per queued task, bytes per finished task, worker CPU s per 10,000 (burst drain)."""
    with EmbeddedRedis(appendonly=True) as server:
        startup = _burst_cpu(server.url)  # nothing queued yet: start-up and shutdown only
        empty = _used_memory(server.url)
        asyncio.run(_enqueue(server.url, tasks))
        queued = _used_memory(server.url)
        drain = _burst_cpu(server.url)
        finished = _used_memory(server.url)
    return {
        "queued_bytes": (queued - empty) / tasks,
        "finished_bytes": (finished - empty) / tasks,
        "drain_cpu": max(0.0, drain - startup) / tasks * PER,
        "startup_cpu": startup,
    }


def run(args: argparse.Namespace | None = None) -> Report:
    """Measure (with the default options unless given); the section for docs/benchmarks.md."""
    args = args or parser().parse_args([])
    print(f"memory: enqueue {args.tasks:,} tasks, then drain them", flush=True)
    mem = memory_and_drain(args.tasks)
    loads: dict[float, dict[str, float]] = {}
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-cost-"))
    with stack(log_dir) as s:
        measure_rate(s, min(args.rates), 2)  # warm-up
        for rate in args.rates:
            r = measure_rate(s, rate, args.seconds)
            if r.bad:
                raise RuntimeError(f"{r.bad} requests failed at {rate:g}/s")
            loads[rate] = {k: v / r.answered * PER for k, v in r.cpu.items()}
            loads[rate]["generator"] = r.generator_cpu / r.answered * PER
            print(f"{rate:,.0f}/s: CPU s per {PER:,} tasks {loads[rate]}", flush=True)
        binary = s.redis.binary
    data = {"memory": mem, "cpu": {str(int(k)): v for k, v in loads.items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cost.json").write_text(json.dumps(data, indent=2) + "\n")
    return _report(mem, loads, args, binary)


def _report(
    mem: dict[str, float],
    loads: dict[float, dict[str, float]],
    args: argparse.Namespace,
    binary: str | None,
) -> Report:
    rows = [
        f"| {rate:,.0f} tasks/s through HTTP | {c['api']:.2f} | {c['worker']:.2f} "
        f"| {c['redis']:.2f} | {c['api'] + c['worker'] + c['redis']:.2f} |"
        for rate, c in loads.items()
    ]
    rows.append(
        f"| burst drain of a {args.tasks:,}-task backlog (worker only, start-up excluded) | "
        f"| {mem['drain_cpu']:.2f} | | |"
    )
    rates = " ".join(f"{r:g}" for r in args.rates)
    command = (
        f"python -m bench.cost --tasks {args.tasks} --rates {rates} --seconds {args.seconds:g}"
    )
    markdown = "\n".join(
        [
            "What a task costs in Redis memory and in CPU time, for the HTTP benchmarks' task "
            "(a ~90-byte JSON payload, `bench/http/spillway_app.py`'s `resize`).",
            "",
            "| Redis memory | bytes per task |",
            "| --- | ---: |",
            f"| queued (task record + stream entry) | **{mem['queued_bytes']:,.0f}** |",
            "| finished (the record with its result, kept for `SPILLWAY_RESULT_TTL`, "
            f"a day by default; the stream entry is gone) | **{mem['finished_bytes']:,.0f}** |",
            "",
            f"| CPU seconds per {PER:,} tasks | API (all its processes) | worker | Redis | total |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"- Memory: Redis's `used_memory` before and after {args.tasks:,} tasks "
            "(`enqueue_many`, 1,000 per call), divided by the count; then again after one "
            "burst worker drained them.",
            "- CPU under load: user + system seconds of each process tree from the first "
            "request until every task was done, measured with the stack of the end to end "
            f"latency benchmark (API 2 processes, one worker) at each rate for {args.seconds:g} "
            "s; idle work (heartbeats, blocking reads) counts. The burst drain row is the "
            "worker process's own CPU less that of a burst worker that found the queue empty "
            f"({mem['startup_cpu']:.2f} s of start-up and shutdown).",
            f"- Command: `{command}` (`make bench` runs it as `python -m bench.run cost`).",
            "- Redis: the embedded throw-away server on loopback, AOF on (`appendfsync everysec`).",
            f"- Measured: {machine(binary)}; the machine is shared, so CPU seconds include some "
            "cache and scheduling overhead from other work.",
        ]
    )
    summary = (
        f"{mem['queued_bytes']:,.0f} bytes per queued task, {mem['finished_bytes']:,.0f} per "
        "finished; CPU s per 10,000 tasks: "
        + "; ".join(
            f"{rate:,.0f}/s API {c['api']:.2f}, worker {c['worker']:.2f}, Redis {c['redis']:.2f}"
            for rate, c in loads.items()
        )
    )
    return Report(TITLE, summary, markdown)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--rates", type=float, nargs="+", default=[1000.0, 5000.0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds offered per rate")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
