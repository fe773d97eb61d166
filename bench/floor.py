"""The API's CPU floor per request at fixed rates (issue 21's budget, its API line).

    python -m bench.floor [--rates 5000 10000] [--seconds 8] [--no-write]

The open-loop generator of `bench.latency` (`bench.http.openloop`) offers each rate to four
servers in turn, 2 processes each, on one throw-away Redis (AOF on): the bare server Spillway
runs answering 202 from its protocol (`bench.http.ceiling_app`'s direct route), the same plus
the least durable write there is (`bench.http.floor_app`: one coalesced XADD per request),
Spillway's API with its Redis write stubbed out (`BENCH_STUB_WRITE=1`), and Spillway's API.
CPU seconds of each server's process tree (and of Redis) over the offer, divided by the
requests answered, say what any Python API on this server would cost per request at that
rate, what the durable write adds, and what Spillway's own accept work adds. No worker runs:
the tasks Spillway accepts stay queued. Every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import Report, machine, standalone
from bench.http.run import (
    Server,
    direct_ceiling_server,
    floor_server,
    spillway_server,
    stub_server,
)
from bench.latency import offer_tasks, tree_cpu
from spillway.embedded import EmbeddedRedis

__all__ = ["TITLE", "run"]

TITLE = "The API's CPU floor per request"
PROCESSES = 2


def _servers(redis_url: str) -> list[tuple[str, Callable[[], Server]]]:
    return [
        ("bare server, 202 from the protocol", lambda: direct_ceiling_server(PROCESSES)),
        ("the same plus one XADD (the least durable write)",
         lambda: floor_server(redis_url, PROCESSES)),
        ("Spillway's API, its Redis write stubbed out", lambda: stub_server(redis_url, PROCESSES)),
        ("Spillway's API", lambda: spillway_server(redis_url, PROCESSES)),
    ]  # fmt: skip


def run(args: argparse.Namespace | None = None) -> Report:
    args = args or parser().parse_args([])
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-floor-"))
    rows: dict[str, dict[float, tuple[float, float, float]]] = {}
    with EmbeddedRedis(appendonly=True) as redis_server:
        for name, make in _servers(redis_server.url):
            server = make()
            server.start(log_dir)
            try:
                if server.process is None:
                    raise RuntimeError(f"{name} did not start")
                offer_tasks(server.port, 1000, 1)  # warm-up: connections, imports, scripts
                for rate in args.rates:
                    before = tree_cpu(server.process.pid)
                    redis_before = tree_cpu(redis_server.pid)
                    generator = time.process_time()
                    answers, errors = offer_tasks(server.port, rate, args.seconds)
                    n = len(answers)
                    bad = errors + sum(1 for a in answers if not 200 <= a.status < 300)
                    if bad or not n:
                        raise RuntimeError(f"{name}: {bad} bad answers of {n} at {rate:g}/s")
                    rows.setdefault(name, {})[rate] = (
                        (tree_cpu(server.process.pid) - before) / n * 1e6,
                        (tree_cpu(redis_server.pid) - redis_before) / n * 1e6,
                        (time.process_time() - generator) / n * 1e6,
                    )
                    print(f"{name} at {rate:,.0f}/s: {rows[name][rate][0]:.1f} us", flush=True)
            finally:
                server.stop()
        binary = redis_server.binary
    return _report(rows, args, binary)


def _report(
    rows: dict[str, dict[float, tuple[float, float, float]]],
    args: argparse.Namespace,
    binary: str | None,
) -> Report:
    rates = list(args.rates)
    head = " | ".join(f"{r:,.0f}/s: server + Redis (generator)" for r in rates)
    lines = [
        f"| {name} | "
        + " | ".join(f"**{by[r][0]:.0f}** + {by[r][1]:.0f} ({by[r][2]:.0f})" for r in rates)
        + " |"
        for name, by in rows.items()
    ]
    command = (
        f"python -m bench.floor --rates {' '.join(f'{r:g}' for r in rates)} "
        f"--seconds {args.seconds:g}"
    )
    markdown = "\n".join(
        [
            "CPU microseconds per request of each server's processes (2 of each), of Redis and "
            "of the open-loop generator, offered each rate for "
            f"{args.seconds:g} s by `bench.http.openloop` (64 keep-alive connections, as "
            "`bench.latency`): what any API on this server costs per request at these rates "
            "(the first row), what writing to Redis before answering adds (the second), and "
            "what Spillway's accept work adds (the last two). No worker runs.",
            "",
            f"| server | {head} |",
            "| --- | " + " | ".join("---:" for _ in rates) + " |",
            *lines,
            "",
            f"- Command: `{command}` (`make bench` runs it as `python -m bench.run floor`).",
            f"- Measured: {machine(binary)}.",
        ]
    )
    summary = "; ".join(
        f"{name}: " + ", ".join(f"{by[r][0]:.0f} us at {r:,.0f}/s" for r in rates)
        for name, by in rows.items()
    )
    return Report(TITLE, summary, markdown)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[5000.0, 10000.0])
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds offered per rate")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
