"""Queue events: what following a queue costs per task, nobody following (the default) against
one follower and ten.

    python -m bench.feed [--tasks 20000] [--rounds 3] [--no-write]

In one process, on one throw-away redis-server: `--tasks` no-op tasks are enqueued with
`enqueue_many` (batches of 1,000), then drained by a burst `Worker` (concurrency 100). Three
set-ups take turns, their order rotating each round: **nobody** follows (the feeds do not
exist: the scripts' one `TYPE` call each is the whole cost), **1 follower** and **10
followers** of the queue (`spillway.feed.follow`, as `Spillway.queue_events` runs it),
counting what they get: each must see all three changes of every task. The figures are CPU
microseconds per task of this process (enqueue, drain: the followers' reading included, as an
API process serving them would pay it) and of redis-server (from `INFO cpu`), and their ratio
to **nobody** in the same round; medians over the rounds. The cost of **nobody** against the
code before the feeds existed is the A/B's (`python -m bench.ab`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bench import Report, machine, standalone
from spillway import Settings, Spillway, Worker
from spillway.app import EnqueueItem
from spillway.embedded import EmbeddedRedis
from spillway.feed import follow

__all__ = ["TITLE", "run"]

TITLE = "Queue events"
NAMES = ["nobody", "1 follower", "10 followers"]
FOLLOWERS = {"nobody": 0, "1 follower": 1, "10 followers": 10}


def _app(url: str, prefix: str) -> Spillway:
    app = Spillway(Settings(redis_url=url, prefix=prefix, backlog_limit=10**7))

    @app.task
    async def noop(payload: int) -> None:
        return None

    return app


async def _redis_cpu(app: Spillway) -> float:
    info: dict[str, Any] = await app.broker.client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _count(
    app: Spillway, want: int, seen: list[int], index: int, joined: asyncio.Event
) -> None:
    """Count the queue's changes until `want` came (`Spillway.queue_events`' own follower,
    with the signal that it joined)."""
    events = follow(app.feed, "default", timeout=3600, joined=joined)
    try:
        async for _ in events:
            seen[index] += 1
            if seen[index] == want:
                return
    finally:
        await events.aclose()


async def _measure(app: Spillway, tasks: int, followers: int) -> tuple[float, float, float]:
    """CPU us per task: this process enqueueing, this process draining, redis-server."""
    await app.connect()
    seen = [0] * followers
    joined = [asyncio.Event() for _ in range(followers)]
    counting = [
        asyncio.create_task(_count(app, 3 * tasks, seen, i, joined[i])) for i in range(followers)
    ]
    for event in joined:
        await event.wait()
    redis_before = await _redis_cpu(app)
    cpu = time.process_time()
    for start in range(0, tasks, 1000):
        items = [EnqueueItem("noop", n) for n in range(start, min(start + 1000, tasks))]
        if not all(r.ok for r in await app.enqueue_many(items)):
            raise RuntimeError("an enqueue was refused")
    enqueue = time.process_time() - cpu
    cpu = time.process_time()
    await Worker(app, burst=True, concurrency=100).run()
    async with asyncio.timeout(60):
        await asyncio.gather(*counting)  # every change reached every follower
    drain = time.process_time() - cpu
    redis = await _redis_cpu(app) - redis_before
    if any(n != 3 * tasks for n in seen):
        raise RuntimeError(f"followers saw {seen} changes, not {3 * tasks} each")
    return enqueue / tasks * 1e6, drain / tasks * 1e6, redis / tasks * 1e6


def run(args: argparse.Namespace | None = None) -> Report:
    tasks = getattr(args, "tasks", 20000)
    rounds = getattr(args, "rounds", 3)
    figures: dict[str, list[tuple[float, float, float]]] = {n: [] for n in NAMES}
    with EmbeddedRedis() as redis:

        async def one_round(r: int) -> None:
            order = NAMES[r % 3 :] + NAMES[: r % 3]
            for name in order:
                app = _app(redis.url, f"bench-feed-{r}-{NAMES.index(name)}")
                try:
                    figures[name].append(await _measure(app, tasks, FOLLOWERS[name]))
                finally:
                    await app.close()

        async def all_rounds() -> None:
            await one_round(-1)  # a warm-up round, not counted
            for name in NAMES:
                figures[name].clear()
            for r in range(rounds):
                await one_round(r)

        asyncio.run(all_rounds())

    def median(name: str, i: int) -> float:
        return statistics.median(f[i] for f in figures[name])

    def ratio(name: str, i: int) -> float:
        return statistics.median(
            f[i] / o[i] for f, o in zip(figures[name], figures["nobody"], strict=True)
        )

    rows = [
        f"| {name} | {median(name, 0):.1f} | {ratio(name, 0):.2f} | {median(name, 1):.1f} | "
        f"{ratio(name, 1):.2f} | {median(name, 2):.1f} | {ratio(name, 2):.2f} |"
        for name in NAMES
    ]
    command = f"python -m bench.feed --tasks {tasks} --rounds {rounds}"
    markdown = "\n".join(
        [
            f"`{command}` ({machine()}). {tasks} no-op tasks enqueued in batches of 1,000,",
            "then drained by one in-process burst worker, while nobody, one or ten followers",
            "of the queue (in the same process) count its changes (each saw all three of",
            "every task); CPU microseconds per task of that process and of redis-server,",
            f"medians of {rounds} rounds, each ratio against **nobody** in its own round.",
            "",
            "| followers | enqueue us/task | x nobody | drain us/task | x nobody "
            "| Redis us/task | x nobody |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    summary = (
        f"1 follower: Redis x{ratio('1 follower', 2):.2f}, drain x{ratio('1 follower', 1):.2f}; "
        f"10 followers: Redis x{ratio('10 followers', 2):.2f}, "
        f"drain x{ratio('10 followers', 1):.2f} of nobody"
    )
    return Report(TITLE, summary, markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feed", description=__doc__)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    return standalone(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
