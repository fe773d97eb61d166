"""The measurements: enqueue, drain and sleep workload for every peer, rounds interleaved.

Rounds go peer by peer, then start over, so a noisy minute on this shared machine lands on
every library rather than on one. Each round has its own throw-away redis-server (loopback
only) and every measurement starts from FLUSHALL.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis
from rich.console import Console

from bench.peers.driver import Workload
from bench.peers.peers import SLEEP_CONCURRENCY, Peer
from bench.peers.process import Failed, WorkerProcess, produce
from spillway.embedded import EmbeddedRedis

__all__ = ["Figure", "Plan", "Results", "run_suite"]

SLEEP_TASKS = 2_000


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure; `--quick` shrinks it."""

    rounds: int = 3
    drain_tasks: int = 20_000
    enqueue_tasks: int = 5_000
    drain_timeout: float = 300.0
    sleep_timeout: float = 60.0
    enqueue_timeout: float = 180.0


@dataclass(slots=True)
class Figure:
    """The samples of one measurement, and why any run gave none."""

    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def spread(self) -> tuple[float, float] | None:
        return (min(self.values), max(self.values)) if self.values else None


@dataclass(slots=True)
class Results:
    """Per peer key: enqueue rates by mode (tasks/s), drain rate (tasks/s), sleep wall (s)."""

    enqueue: dict[str, dict[str, Figure]] = field(default_factory=dict)
    drain: dict[str, Figure] = field(default_factory=dict)
    sleep: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_suite(peers: tuple[Peer, ...], plan: Plan, console: Console) -> Results:
    results = Results()
    for peer in peers:
        results.enqueue[peer.key] = {mode: Figure() for mode in peer.modes}
        results.drain[peer.key] = Figure()
        results.sleep[peer.key] = Figure()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as scratch:
        for round_no in range(1, plan.rounds + 1):
            with EmbeddedRedis() as server:
                client = redis.Redis.from_url(server.url)
                try:
                    for peer in peers:
                        run = _Run(peer, plan, server.url, client, Path(scratch), round_no)
                        run.measure(results, console)
                finally:
                    client.close()
    return results


class _Run:
    """One peer in one round."""

    def __init__(
        self, peer: Peer, plan: Plan, url: str, client: redis.Redis, scratch: Path, round_no: int
    ) -> None:
        self.peer, self.plan, self.url, self.client = peer, plan, url, client
        self.scratch, self.round_no = scratch, round_no
        self.env = {
            **os.environ,
            "BENCH_REDIS_URL": url,
            "SPILLWAY_REDIS_URL": url,
            "PYTHONPATH": os.getcwd(),
        }

    def measure(self, results: Results, console: Console) -> None:
        peer = self.peer
        for mode in peer.modes:
            self._record(
                console, f"enqueue {mode}", results.enqueue[peer.key][mode], self._enqueue, mode
            )
        self._record(console, "drain", results.drain[peer.key], self._drain, "noop")
        if peer.sleep_skip is None:
            self._record(console, "sleep", results.sleep[peer.key], self._sleep, "sleep")

    def _record(
        self, console: Console, what: str, figure: Figure, fn: Callable[[str], float], arg: str
    ) -> None:
        label = f"[{self.round_no}/{self.plan.rounds}] {self.peer.label}: {what}"
        with console.status(label):
            try:
                value = fn(arg)
            except Failed as exc:
                figure.failures.append(str(exc))
                console.print(f"{label}: [red]{exc}[/]")
                return
        figure.values.append(value)
        unit = "s" if what == "sleep" else "tasks/s"
        console.print(
            f"{label}: {value:,.2f} {unit}" if unit == "s" else f"{label}: {value:,.0f} {unit}"
        )

    def _enqueue(self, mode: str) -> float:
        self.client.flushall()
        n = self.plan.enqueue_tasks
        figures = produce(self.peer.key, mode, "noop", n, self.env, self.plan.enqueue_timeout)
        return n / float(figures["seconds"])

    def _drain(self, workload: str) -> float:
        n = self.plan.drain_tasks
        figures = self._work("noop", n, self.peer.drain_concurrency, self.plan.drain_timeout)
        if "stored_first" in figures:  # Spillway: up to the last outcome record written
            return (n - 1) / ((figures["stored_last"] - figures["stored_first"]) / 1000)
        return (n - 1) / (figures["last_end"] - figures["first_end"])

    def _sleep(self, workload: str) -> float:
        figures = self._work("sleep", SLEEP_TASKS, SLEEP_CONCURRENCY, self.plan.sleep_timeout)
        return float(figures["last_end"] - figures["first_start"])

    def _work(
        self, workload: Workload, n: int, concurrency: int, timeout: float
    ) -> Mapping[str, float]:
        """Fill the queue with `n` tasks, run the peer's worker until it has done them all."""
        peer = self.peer
        self.client.flushall()
        produce(peer.key, peer.fill, workload, n, self.env, self.plan.enqueue_timeout)
        tag = f"{peer.key}-{workload}-{self.round_no}"
        probe = self.scratch / f"{tag}.json"
        env = {
            **self.env,
            "BENCH_PROBE_FILE": str(probe),
            "BENCH_PROBE_TARGET": str(n),
            "BENCH_CONCURRENCY": str(concurrency),
        }
        command = peer.command(workload, concurrency, self.url)
        with WorkerProcess(command, env, self.scratch / f"{tag}.log") as worker:
            figures = worker.wait_for(probe, timeout)
            if peer.exits_when_drained and not worker.wait_exit(30.0):
                raise Failed("burst worker did not exit within 30 s of its last task")
        if peer.key == "spillway":
            first, last = self._verify_spillway(workload, n)
            figures = {**figures, "stored_first": first, "stored_last": last}
        return figures

    def _verify_spillway(self, workload: Workload, n: int) -> tuple[float, float]:
        """Spillway's claim includes "results stored and entries acknowledged": check it.

        Returns the first and last `finished_at` (ms) of the stored outcome records.
        """
        found = produce("spillway", "verify", workload, 0, self.env, 60.0)
        succeeded = found["counts"].get("succeeded", 0)
        if succeeded != n or found["left"] != 0 or not found["stored_ms"]:
            raise Failed(f"{succeeded} of {n} outcomes stored, {found['left']} entries left")
        first, last = found["stored_ms"]
        return float(first), float(last)
