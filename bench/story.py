"""The seed's story, measured: a surge offered to the synchronous design and to Spillway in
turn, the same orders written to PostgreSQL behind each (issue 19; docs/seed-story.md).

    python -m bench.story                                          # the full story (~4 min)
    python -m bench.story --surge-rate 500 --surge-seconds 3 --baseline-seconds 3  # a smoke run

Each design gets a fresh throw-away PostgreSQL (or ``SPILLWAY_EXAMPLE_PG_URL``) and, for
Spillway, a fresh Redis with its AOF on. The open-loop generator (bench/story_load.py) offers
the baseline, the surge, the baseline again; every second a sampler records the database's
connections (``pg_stat_activity``, by the pools' application names), the backlog (Spillway's
stats), the rows written and the machine's CPU (/proc/stat). After the load, Spillway's backlog
is left to drain; then every accepted task's row is looked up: rows == accepted, lost == 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson

from bench import ROOT, Report, machine, standalone
from bench.story_load import Load, offer
from examples.orders import db
from examples.orders.pg import postgres_url
from examples.orders.stack import Stack
from spillway import Settings, Spillway
from spillway.embedded import EmbeddedRedis

__all__ = ["DESIGNS", "Run", "Sample", "main", "parser", "run"]

DESIGNS = ("sync", "spillway")
_APPLICATION = {"sync": "orders-sync", "spillway": "orders-spillway"}
_CONNECTIONS = """
SELECT count(*) AS total, count(*) FILTER (WHERE state <> 'idle') AS busy
FROM pg_stat_activity WHERE application_name = $1
"""


@dataclass(slots=True)
class Sample:
    """One second's state, at second `t` of the run."""

    t: float
    connections: int  # the design's connections to PostgreSQL
    busy: int  # of those, in a query or a transaction
    backlog: int | None  # Spillway's tasks not finished (None for the synchronous design)
    rows: int  # orders written since the run began
    cpu: float  # the machine's busy fraction over the last second (1.0 = every CPU)


@dataclass(slots=True)
class Run:
    """One design's run: the load's seconds, the samples, and the reckoning afterwards."""

    design: str
    load: Load
    samples: list[Sample] = field(default_factory=list)
    rows: int = 0
    found: int = 0  # accepted requests whose row is there
    drained_s: float | None = None  # after the surge, until back to the baseline's state
    cpu_seconds: float = 0.0  # the machine's busy CPU-seconds from load start to drained

    @property
    def accepted(self) -> int:
        return len(self.load.accepted)

    @property
    def lost(self) -> int:
        return self.accepted - self.found


def _cpu_busy() -> float:
    """The machine's busy CPU-seconds since boot (every CPU, from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _bodies(count: int = 1000) -> list[bytes]:
    """Orders spread over the catalogue and the customers (so rows rarely contend)."""
    rng = random.Random(19)  # noqa: S311 - the same orders every run, not a secret
    return [
        orjson.dumps(
            {"customer_id": rng.randint(1, 50_000), "sku": rng.randint(1, db.PRODUCTS),
             "quantity": rng.randint(1, 5)}
        )
        for _ in range(count)
    ]  # fmt: skip


async def _backlog(spillway: Spillway | None) -> int | None:
    if spillway is None:
        return None
    stats = await spillway.stats()
    return sum(q.backlog + q.delayed for q in stats.queues)


async def _sample(
    run: Run,
    pg: asyncpg.Connection,
    spillway: Spillway | None,
    base_rows: int,
    until: asyncio.Event,
) -> None:
    """Record a Sample every second until `until` is set."""
    origin, cpu_before, at = run.load.start, _cpu_busy(), time.monotonic()
    while not until.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), max(0.0, 1.0 - (time.monotonic() - at)))
        now, cpu = time.monotonic(), _cpu_busy()
        conns = await pg.fetchrow(_CONNECTIONS, _APPLICATION[run.design]) or {"total": 0, "busy": 0}
        rows = await pg.fetchval("SELECT count(*) FROM orders") - base_rows
        backlog = await _backlog(spillway)
        share = (cpu - cpu_before) / max(now - at, 1e-3) / (os.cpu_count() or 1)
        run.samples.append(
            Sample(time.time() - origin, conns["total"], conns["busy"], backlog, rows, share)
        )
        cpu_before, at = cpu, now


async def _measure(design: str, pg_url: str, url: str, redis: str | None, prefix: str,
                   args: argparse.Namespace) -> Run:  # fmt: skip
    split = urlsplit(url)
    schedule = [
        (args.baseline_rate, args.baseline_seconds),
        (args.surge_rate, args.surge_seconds),
        (args.baseline_rate, args.baseline_seconds),
    ]
    pg = await asyncpg.connect(pg_url)
    spillway = Spillway(Settings(redis_url=redis, prefix=prefix)) if redis else None
    try:
        if spillway is not None:
            await spillway.connect()
        await _warm_up(url, spillway)
        base_rows = await pg.fetchval("SELECT count(*) FROM orders")
        cpu_start, stop = _cpu_busy(), asyncio.Event()
        run = Run(design, Load(time.time() + 0.05, [], []))
        sampler = asyncio.create_task(_sample(run, pg, spillway, base_rows, stop))
        run.load = await offer(
            split.hostname or "127.0.0.1", split.port or 80, _bodies(), schedule,
            max_connections=args.connections, timeout=args.client_timeout,
        )  # fmt: skip
        # Spillway's backlog drains after the load; the sampler keeps recording while it does.
        if spillway is not None:
            await _drained(spillway, args.drain_timeout)
        stop.set()
        await sampler
        run.cpu_seconds = _cpu_busy() - cpu_start
        run.rows = await pg.fetchval("SELECT count(*) FROM orders") - base_rows
        ids = [a for a in run.load.accepted if not a.startswith("order:")]
        orders = [int(a[6:]) for a in run.load.accepted if a.startswith("order:")]
        run.found = await pg.fetchval(
            "SELECT count(*) FROM orders WHERE request_id = ANY($1::text[]) OR id = ANY($2)",
            ids, orders,
        )  # fmt: skip
        run.drained_s = _recovered(run, args)
        return run
    finally:
        await pg.close()
        if spillway is not None:
            await spillway.close()


async def _drained(spillway: Spillway, timeout: float) -> None:
    """Return once the backlog is empty, or after `timeout` seconds (the report tells)."""
    deadline = time.monotonic() + timeout
    # Polled: stats() is the figure we report, and there is no event for "backlog empty".
    while await _backlog(spillway) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)


async def _warm_up(url: str, spillway: Spillway | None, orders: int = 50) -> None:
    """Open the pools and load the code paths before the clock starts: a cold start is not
    what the surge is about."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for body in _bodies(orders):
            headers = {"content-type": "application/json"}
            (await client.post("/process", content=body, headers=headers)).raise_for_status()
    if spillway is not None:
        await _drained(spillway, 60.0)


def _recovered(run: Run, args: argparse.Namespace) -> float | None:
    """Seconds from the surge's end until the design is back where the baseline had it:
    Spillway's backlog as small as during the first baseline, the synchronous design's
    per-second p99 within twice the first baseline's (and at most 100 ms above it)."""
    surge_end: float = args.baseline_seconds + args.surge_seconds
    before = [s for s in run.samples if s.t <= args.baseline_seconds]
    if run.design == "spillway":
        calm = max([s.backlog or 0 for s in before] + [10])
        after = [s.t for s in run.samples if s.t >= surge_end and (s.backlog or 0) <= calm]
        return after[0] - surge_end if after else None
    seconds = run.load.seconds
    base = [x for s in seconds[: int(args.baseline_seconds)] for x in s.latencies]
    ceiling = min(2 * _p(base, 99), _p(base, 99) + 0.1) if base else 0.1
    for t in range(int(surge_end), len(seconds)):
        if seconds[t].latencies and _p(seconds[t].latencies, 99) <= ceiling:
            return t - surge_end
    return None


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] if ordered else 0.0


def _one(design: str, args: argparse.Namespace) -> Run:
    print(f"--- {design}: starting PostgreSQL and the front door", flush=True)
    with contextlib.ExitStack() as running:
        pg_url = running.enter_context(postgres_url())
        asyncio.run(db.migrate(pg_url))
        redis = "redis://unused"  # the synchronous design has no Redis
        if design == "spillway":
            redis = running.enter_context(EmbeddedRedis(appendonly=True)).url
        logs = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="story-")))
        stack = running.enter_context(
            Stack(pg_url, redis, logs, db_concurrency=args.db_concurrency,
                  pool_size=args.pool_size, pool_timeout=args.pool_timeout)
        )  # fmt: skip
        if design == "spillway":
            url = stack.spillway_api(workers=args.api_workers)
            stack.worker(processes=args.worker_processes, concurrency=args.worker_concurrency)
        else:
            url = stack.sync_api(workers=args.api_workers)
        print(f"--- {design}: offering the load ({stack.pids()})", flush=True)
        return asyncio.run(
            _measure(design, pg_url, url, redis if design == "spillway" else None,
                     stack.prefix, args)
        )  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.story", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add = p.add_argument
    add("--designs", default=",".join(DESIGNS), help="which, in this order (default: %(default)s)")
    add("--baseline-rate", type=float, default=200.0, help="requests/s (default: %(default)s)")
    add("--baseline-seconds", type=float, default=20.0, help="before and after the surge")
    add("--surge-rate", type=float, default=10_000.0, help="requests/s (default: %(default)s)")
    add("--surge-seconds", type=float, default=30.0, help="(default: %(default)s)")
    add("--connections", type=int, default=1000, help="the generator's most open connections")
    add("--client-timeout", type=float, default=10.0, help="a caller gives up after this (s)")
    add("--pool-size", type=int, default=20, help="the synchronous design's pool, per process")
    add("--pool-timeout", type=float, default=30.0, help="its wait for a connection (s)")
    add("--db-concurrency", type=int, default=20, help="Spillway's concurrency= for the task")
    add("--api-workers", type=int, default=2, help="server processes of each front door")
    add("--worker-processes", type=int, default=1)
    add("--worker-concurrency", type=int, default=100)
    add("--drain-timeout", type=float, default=900.0, help="how long the backlog may take (s)")
    add("--out", type=Path, default=ROOT / "docs", help="where seed-story.md and figures go")
    add("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    return p


def run(args: argparse.Namespace | None = None) -> Report:
    from bench.story_report import write  # matplotlib is imported only when drawing

    args = args or parser().parse_args([])
    runs = [_one(design, args) for design in args.designs.split(",")]
    return write(runs, args, machine())


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
