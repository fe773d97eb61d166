"""What the scenario tests share: their sizes, the stack they start, and the final check."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.chaos.checker import Store, Verdict, check, snapshot
from tests.chaos.harness import Child, Stack
from tests.chaos.load import History, Op
from tests.chaos.report import record

__all__ = [
    "SIZES", "Keeper", "Running", "WorkerKiller", "conclude", "enqueue", "finish", "pick", "start",
]  # fmt: skip

#: CI size runs in `make test`; full size only under `make chaos` (marker `chaos`).
SIZES = [
    pytest.param("ci", id="ci"),
    pytest.param("full", id="full", marks=[pytest.mark.chaos, pytest.mark.timeout(3600)]),
]


def pick(size: str, ci: Any, full: Any) -> Any:
    """The value for this size."""
    return ci if size == "ci" else full


@dataclass
class Running:
    """A started stack: its API ports and workers."""

    stack: Stack
    ports: list[int]
    workers: list[Child]

    @property
    def urls(self) -> list[str]:
        return [self.stack.api_url(p) for p in self.ports]


async def start(stack: Stack, *, apis: int = 0, workers: int = 0, concurrency: int = 8) -> Running:
    """Start Redis, then the API servers and workers side by side, and wait for all of them."""
    await stack.start()
    ports = []
    for _ in range(apis):
        child = stack.start_api()
        ports.append(next(p for p, c in stack.apis.items() if c is child))
    children = [stack.start_worker(concurrency) for _ in range(workers)]
    await asyncio.gather(*(stack.wait_api(p) for p in ports), stack.wait_workers(children))
    return Running(stack, ports, children)


async def conclude(
    verdict: Verdict,
    stack: Stack,
    history: History,
    *,
    drain_timeout: float,
    extra_ids: Sequence[str] = (),
    **check_options: Any,
) -> tuple[Verdict, Store]:
    """Drain, snapshot the store and run the global invariants; the drain time is noted."""
    started = time.monotonic()
    try:
        took = await stack.drain([*history.accepted_ids(), *extra_ids], drain_timeout)
        verdict.check("drained in time", True)
        verdict.notes["drain_s"] = round(took, 1)
    except AssertionError as exc:
        verdict.check("drained in time", False, exc)
        verdict.notes["drain_s"] = round(time.monotonic() - started, 1)
    await stack.stop_workers()
    nodes = await asyncio.to_thread(stack.primary_clients)
    try:
        store = await snapshot(
            stack.redis_client, stack.prefix, stack.spillway.lanes(),
            shards=stack.settings.shards, nodes=nodes,
        )  # fmt: skip
    finally:
        for node in nodes:
            await node.aclose()
    check(verdict, history, store, **check_options)
    if verdict.failures():
        # What the processes printed when they failed (a 500's traceback is in an API's log).
        verdict.notes["tracebacks"] = _tracebacks(stack.log_dir)
    return verdict, store


def _tracebacks(log_dir: Path, limit: int = 2) -> list[str]:
    """The first tracebacks in the stack's process logs, each cut to its last 1,500 chars."""
    found = []
    for log in sorted(log_dir.glob("*.log")):
        text = log.read_text(errors="replace")
        for part in text.split("Traceback (most recent call last):")[1 : limit + 1]:
            found.append(f"{log.name}: ...{part[:4000][-1500:]}")
    return found[:limit]


async def enqueue(stack: Stack, items: Sequence[tuple[str, int]], key_prefix: str = "d") -> History:
    """Enqueue (type, ms) tasks in this process, recorded as accepted requests of a history.

    For scenarios about workers: `enqueue` returns only once the task is written, like a 202.
    """
    history = History()
    for n, (task, ms) in enumerate(items):
        key = f"{key_prefix}{n}"
        history.keys.add(key)
        started = time.time()
        task_id = await stack.spillway.enqueue(task, {"key": key, "ms": ms})
        history.ops.append(Op(key, "in-process", started, time.time(), 202, task_id))
    return history


class Keeper:
    """Restarts workers that died (what a supervisor does), counting the restarts."""

    def __init__(self, stack: Stack, concurrency: int) -> None:
        self.stack = stack
        self.concurrency = concurrency
        self.restarts = 0
        self._replaced: set[Child] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Keeper:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            for w in list(self.stack.workers):
                # Exit 0 or SIGTERM is a requested stop; anything else is a death to make good.
                code = w.process.poll()
                if code not in (None, 0, -signal.SIGTERM) and w not in self._replaced:
                    self._replaced.add(w)
                    self.restarts += 1
                    self.stack.start_worker(self.concurrency)
            await asyncio.sleep(0.05)


def finish(verdict: Verdict) -> None:
    """Record the row, then fail the test if any check failed."""
    record(verdict)
    verdict.assert_passed()


class WorkerKiller:
    """Every `every` seconds, kill -9 a random live worker and start a new one (a new
    consumer name), `planned` times; then, a second later, set `stop` so the load ends."""

    def __init__(
        self, stack: Stack, concurrency: int, planned: int, rng: random.Random, every: float = 2.0
    ) -> None:
        self.stack, self.concurrency, self.planned, self.rng = stack, concurrency, planned, rng
        self.every = every
        self.stop = asyncio.Event()
        self.kills = 0
        self.last_kill = 0.0

    async def run(self) -> None:
        while not self.stop.is_set():
            await asyncio.sleep(self.every)
            if self.stop.is_set():
                return
            victim = self.rng.choice(self.stack.live_workers())
            await asyncio.to_thread(victim.kill)
            self.kills += 1
            self.last_kill = time.time()
            self.stack.start_worker(self.concurrency)
            if self.kills >= self.planned:
                await asyncio.sleep(1.0)  # load goes on a little after the last kill
                self.stop.set()
