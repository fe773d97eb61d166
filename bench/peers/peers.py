"""Who is measured, how each library's own worker is started, and at what concurrency."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.peers.driver import Workload

__all__ = ["PEERS", "SLEEP_CONCURRENCY", "Peer"]

SLEEP_CONCURRENCY = 500
_BIN = Path(sys.executable).parent


def _cli(name: str) -> str:
    return str(_BIN / name)


@dataclass(frozen=True, slots=True)
class Peer:
    """One library under test."""

    key: str  # bench.peers.<key>_peer
    label: str
    packages: tuple[str, ...]  # whose versions the report lists
    drain_concurrency: int
    concurrency_note: str  # how that concurrency is set, in the library's own words
    modes: tuple[str, ...]  # enqueue modes the library supports
    fill: str  # the fastest of those, used to fill the queue before a drain
    command: Callable[[Workload, int, str], list[str]]  # (workload, concurrency, redis url)
    sleep_skip: str | None = None  # why the sleep workload is not run, if it is not
    exits_when_drained: bool = False  # burst mode: the run also waits for a clean exit

    def module(self) -> str:
        return f"bench.peers.{self.key}_peer"


# fmt: off
PEERS: tuple[Peer, ...] = (
    Peer(
        "spillway", "Spillway", ("spillway", "redis", "hiredis"), 100, "--concurrency 100",
        ("sequential", "concurrent", "batched"), "batched",
        lambda w, c, url: [
            sys.executable, "-m", "spillway", "worker", "bench.peers.spillway_peer:app",
            "--burst", "--concurrency", str(c), "--log-level", "warning",
        ],
        exits_when_drained=True,
    ),
    Peer(
        "arq", "arq", ("arq", "redis", "hiredis"), 100, "max_jobs=100",
        ("sequential", "concurrent"), "concurrent",
        lambda w, c, url: [_cli("arq"), "bench.peers.arq_peer.WorkerSettings"],
    ),
    Peer(
        "streaq", "streaq", ("streaq", "coredis"), 100, "concurrency=100",
        ("sequential", "concurrent", "batched"), "batched",
        lambda w, c, url: [_cli("streaq"), "run", "bench.peers.streaq_peer:worker"],
    ),
    Peer(
        "taskiq", "taskiq + taskiq-redis (RedisStreamBroker)",
        ("taskiq", "taskiq-redis", "redis", "hiredis"), 100, "--max-async-tasks 100",
        ("sequential", "concurrent"), "concurrent",
        lambda w, c, url: [
            _cli("taskiq"), "worker", "bench.peers.taskiq_peer:broker",
            "--workers", "1", "--max-async-tasks", str(c), "--log-level", "WARNING",
        ],
    ),
    Peer(
        "saq", "SAQ", ("saq", "redis", "hiredis"), 100, "concurrency=100",
        ("sequential", "concurrent"), "concurrent",
        lambda w, c, url: [_cli("saq"), "bench.peers.saq_peer.settings"],
    ),
    Peer(
        "dramatiq", "Dramatiq (Redis broker)", ("dramatiq", "redis", "hiredis"), 8,
        "--processes 1 --threads 8 (its default threads)", ("sequential",), "sequential",
        lambda w, c, url: [
            _cli("dramatiq"), "bench.peers.dramatiq_peer", "--processes", "1", "--threads", str(c),
        ],
    ),
    Peer(
        "celery", "Celery (Redis broker)", ("celery", "kombu", "redis", "hiredis"), 1,
        "--pool solo (sleep: --pool threads --concurrency 500)", ("sequential", "batched"),
        "sequential",
        lambda w, c, url: [
            _cli("celery"), "-A", "bench.peers.celery_peer", "worker", "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            *(["--pool", "solo"] if c == 1 else ["--pool", "threads", "--concurrency", str(c)]),
        ],
    ),
    Peer(
        "rq", "RQ (SimpleWorker)", ("rq", "redis", "hiredis"), 1,
        "--worker-class rq.worker.SimpleWorker (one job at a time)", ("sequential", "batched"),
        "batched",
        lambda w, c, url: [
            _cli("rq"), "worker", "--url", url, "--worker-class", "rq.worker.SimpleWorker",
            "--quiet",
        ],
        sleep_skip="one job at a time per process: 2,000 x 0.5 s >= 1,000 s",
    ),
)
# fmt: on
