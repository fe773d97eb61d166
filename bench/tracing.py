"""Tracing: what OpenTelemetry costs per task, off (the default) and on.

    python -m bench.tracing [--tasks 5000] [--rounds 3] [--no-write]

In one process, on one throw-away redis-server: `--tasks` no-op tasks are enqueued one call
each (`Spillway.enqueue`, 100 in flight), then drained by a burst `Worker` (concurrency 100).
Three applications take turns, their order rotating each round: **off** (no tracer provider:
what every user without the otel extra configured runs), **on** (the SDK's `TracerProvider`
with a batch processor and an exporter that drops what it is given: the cost of making the
spans, not of shipping them), and **setting off** (a provider configured but
SPILLWAY_TRACING=false). The figures are CPU microseconds of this process per task (enqueue,
drain) and their ratio to **off** in the same round; medians over the rounds. Redis's own
CPU is left out: tracing adds one field to a traced task's record and nothing to an
untraced one. The "off" line's cost against the code before tracing existed is the A/B's
(`python -m bench.ab`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench import Report, machine, standalone
from spillway import Settings, Spillway, Worker
from spillway.embedded import EmbeddedRedis

__all__ = ["TITLE", "run"]

TITLE = "Tracing"
IN_FLIGHT = 100


class Dropped(SpanExporter):
    """An exporter that takes every span and keeps none (no network in a benchmark)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _app(url: str, prefix: str, provider: Any, tracing: bool) -> Spillway:
    settings = Settings(redis_url=url, prefix=prefix, tracing=tracing, backlog_limit=10**7)
    app = Spillway(settings, tracer_provider=provider)

    @app.task
    async def noop(payload: int) -> None:
        return None

    return app


async def _measure(app: Spillway, tasks: int) -> tuple[float, float]:
    """CPU us per task of this process: enqueueing `tasks` one by one, then draining them."""
    await app.connect()
    pending = iter(range(tasks))

    async def producer() -> None:
        for n in pending:
            await app.enqueue("noop", n)

    cpu = time.process_time()
    await asyncio.gather(*(producer() for _ in range(IN_FLIGHT)))
    enqueue = time.process_time() - cpu
    cpu = time.process_time()
    await Worker(app, burst=True, concurrency=100).run()
    drain = time.process_time() - cpu
    stats = await app.stats()
    left = sum(q.backlog for q in stats.queues)
    if left:
        raise RuntimeError(f"{left} tasks left undrained")
    return enqueue / tasks * 1e6, drain / tasks * 1e6


def run(args: argparse.Namespace | None = None) -> Report:
    tasks = getattr(args, "tasks", 5000)
    rounds = getattr(args, "rounds", 3)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped(), max_queue_size=1 << 16))
    names = ["off", "on", "setting off"]
    figures: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    with EmbeddedRedis() as redis:

        async def one_round(r: int) -> None:
            order = names[r % 3 :] + names[: r % 3]
            for name in order:
                app = _app(
                    redis.url, f"bench-trace-{r}-{names.index(name)}",
                    None if name == "off" else provider, name != "setting off",
                )  # fmt: skip
                try:
                    figures[name].append(await _measure(app, tasks))
                    if app.tracing.enabled is not (name == "on"):
                        raise RuntimeError(f"{name}: tracing is {app.tracing.enabled}")
                finally:
                    await app.close()

        async def all_rounds() -> None:
            await one_round(-1)  # a warm-up round, not counted
            for name in names:
                figures[name].clear()
            for r in range(rounds):
                await one_round(r)

        asyncio.run(all_rounds())
    provider.shutdown()

    def median(name: str, i: int) -> float:
        return statistics.median(f[i] for f in figures[name])

    def ratio(name: str, i: int) -> float:
        return statistics.median(
            f[i] / o[i] for f, o in zip(figures[name], figures["off"], strict=True)
        )

    rows = [
        f"| {name} | {median(name, 0):.0f} | {ratio(name, 0):.2f} | "
        f"{median(name, 1):.0f} | {ratio(name, 1):.2f} |"
        for name in names
    ]
    command = f"python -m bench.tracing --tasks {tasks} --rounds {rounds}"
    markdown = "\n".join(
        [
            f"`{command}` ({machine()}). {tasks} no-op tasks enqueued one call each, then",
            "drained by one in-process burst worker; CPU microseconds of that process per",
            f"task, medians of {rounds} rounds, each ratio against **off** in its own round.",
            "**on** is the SDK's TracerProvider with a batch processor and an exporter that",
            "drops the spans: the cost of making them (a send span per enqueue, a process",
            "span per attempt), not of shipping them.",
            "",
            "| tracing | enqueue us/task | x off | drain us/task | x off |",
            "|---|---:|---:|---:|---:|",
            *rows,
        ]
    )
    summary = (
        f"tracing on: enqueue x{ratio('on', 0):.2f}, drain x{ratio('on', 1):.2f} of off; "
        f"setting off: x{ratio('setting off', 0):.2f}, x{ratio('setting off', 1):.2f}"
    )
    return Report(TITLE, summary, markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    return standalone(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
