"""HTTP accept: the seed's ``POST /process`` beside Spillway's accept routes, under wrk.

    python -m bench.http.run [--runs 3] [--duration 10] [--warmup 2] [--connections 64]
                             [--workers 2] [--no-write]

Starts a throw-away redis-server (AOF on, fsync every second), the seed-faithful baseline
(`bench.http.seed_app`, FastAPI + BackgroundTasks + sync redis-py, 202 before the write)
and Spillway's API (`spillway.api.serve`, what `spillway api` runs), both under granian
with the same number of worker processes, on free loopback ports. Each run measures every
target in turn with wrk (one thread, `--connections` connections, a warm-up, then
`--duration` seconds) on an emptied Redis, then checks what reached Redis: every 202 of
Spillway's must be a task in its stream; for the seed it counts the 202s whose task is not
in the stream one second after the load stopped. Every process it started is stopped by
its PID. Prints a table and writes the "HTTP accept" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import DOC, ROOT, Report, machine, update_section
from spillway import Settings, Spillway
from spillway.embedded import EmbeddedRedis

TITLE = "HTTP accept"
LUA = Path(__file__).with_name("post.lua")
PAYLOAD = {"url": "https://example.com/images/cat-0001.jpg", "width": 640, "height": 480}
PREFIX = "bench"
SEED_STREAM = "async_tasks"  # the seed's own stream name

_SERVE_SPILLWAY = (
    "import sys; from spillway.api import serve; "
    "serve(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]), workers=int(sys.argv[3]))"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A server process this benchmark started (and stops, by its PID); "{port}" in
    `command` becomes its port."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        log = (log_dir / f"{self.name}.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [arg.replace("{port}", str(self.port)) for arg in self.command],
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {log_dir / self.name}.log")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/openapi.json", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start; see {log_dir / self.name}.log")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            # Its own session: the group holds only the server and its workers.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass(frozen=True)
class Target:
    """One thing to load: a server, a path and the body to POST."""

    label: str
    server: Server
    path: str
    body: bytes
    spillway: bool


@dataclass
class Figures:
    """One wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    ok: int
    lost: int = 0  # 202s whose task was not in Redis afterwards


def wrk(url: str, body: bytes, seconds: float, connections: int) -> Figures:
    done = subprocess.run(  # noqa: S603 - wrk found on PATH, fixed arguments
        [
            shutil.which("wrk") or "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            url,
        ],
        env={**os.environ, "WRK_BODY": body.decode()},
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"^WRK_JSON (.*)$", done.stdout, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no results:\n{done.stdout}\n{done.stderr}")
    raw: dict[str, Any] = json.loads(match[1])
    return Figures(
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        non2xx=raw["non2xx"],
        socket_errors=raw["errors"],
        ok=raw["ok"],
    )


def written(target: Target, redis_url: str) -> int:
    """Tasks of `target` in Redis now."""
    if target.spillway:
        return asyncio.run(_spillway_backlog(redis_url))
    client = redis.Redis.from_url(redis_url)
    try:
        time.sleep(1.0)  # the seed writes after answering: give its background writes 1 s
        return int(client.xlen(SEED_STREAM))
    finally:
        client.close()


async def _spillway_backlog(redis_url: str) -> int:
    async with Spillway(Settings(redis_url=redis_url, prefix=PREFIX)) as app:
        return await app.broker.backlog(["default"])


def measure(target: Target, redis_url: str, args: argparse.Namespace) -> Figures:
    flush = redis.Redis.from_url(redis_url)
    try:
        flush.flushall()
    finally:
        flush.close()
    url = target.server.url + target.path
    warm = wrk(url, target.body, args.warmup, args.connections)
    figures = wrk(url, target.body, args.duration, args.connections)
    figures.lost = max(0, warm.ok + figures.ok - written(target, redis_url))
    return figures


def seed_server(redis_url: str, workers: int) -> Server:
    return Server(
        f"seed-{workers}",
        [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--workers",
            str(workers),
            "--http",
            "1",
            "--no-ws",
            "--loop",
            "auto",
            "--log-level",
            "warning",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "bench.http.seed_app:app",
        ],
        {"SEED_REDIS_URL": redis_url},
    )


def spillway_server(redis_url: str, workers: int) -> Server:
    return Server(
        f"spillway-{workers}",
        [
            sys.executable,
            "-c",
            _SERVE_SPILLWAY,
            "bench.http.spillway_app:app",
            "{port}",
            str(workers),
        ],
        {
            "SPILLWAY_REDIS_URL": redis_url,
            "SPILLWAY_PREFIX": PREFIX,
            "SPILLWAY_DEFAULT_TASK_TYPE": "resize",
            # The benchmark measures accepting, with no worker draining: never refuse here.
            "SPILLWAY_BACKLOG_LIMIT": "1000000000",
        },
    )


@contextlib.contextmanager
def started(servers: list[Server], log_dir: Path) -> Iterator[None]:
    try:
        for server in servers:
            server.start(log_dir)
        yield
    finally:
        for server in reversed(servers):
            server.stop()


def run(args: argparse.Namespace | None = None) -> Report:
    """Measure (with the default options unless given); the section for docs/benchmarks.md."""
    args = args or parser().parse_args([])
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-http-"))
    print(f"server logs: {log_dir}", flush=True)
    seed_body = json.dumps(PAYLOAD).encode()
    task_body = json.dumps({"type": "resize", "payload": PAYLOAD}).encode()
    results: dict[str, list[Figures]] = {}
    w = args.workers
    load_before = os.getloadavg()[0]
    with EmbeddedRedis(appendonly=True) as server:
        seed_1, seed_w = seed_server(server.url, 1), seed_server(server.url, w)
        spill = spillway_server(server.url, w)
        targets = [
            Target(
                "seed design, 1 process (as the seed runs it)",
                seed_1,
                "/process",
                seed_body,
                spillway=False,
            ),
            Target(f"seed design, {w} processes", seed_w, "/process", seed_body, spillway=False),
            Target(
                f"Spillway `POST /tasks`, {w} processes", spill, "/tasks", task_body, spillway=True
            ),
            Target(
                f"Spillway `POST /process` (the seed's route and body), {w} processes",
                spill,
                "/process",
                seed_body,
                spillway=True,
            ),
        ]
        with started([seed_1, seed_w, spill], log_dir):
            _measure_all(targets, server.url, args, results)
        redis_binary = server.binary
    args.load = (load_before, os.getloadavg()[0])
    summary, markdown = _report(results, args, redis_binary)
    return Report(TITLE, summary, markdown)


def _measure_all(
    targets: list[Target],
    redis_url: str,
    args: argparse.Namespace,
    results: dict[str, list[Figures]],
) -> None:
    """Every target in turn, `args.runs` times, so they share the machine's weather."""
    for i in range(args.runs):
        for target in targets:
            figures = measure(target, redis_url, args)
            results.setdefault(target.label, []).append(figures)
            print(
                f"run {i + 1}/{args.runs}  {target.label}: {figures.rps:,.0f} req/s, "
                f"p50 {figures.p50_ms:.1f} ms, p99 {figures.p99_ms:.1f} ms, "
                f"non-2xx {figures.non2xx}, 202 not in Redis {figures.lost}",
                flush=True,
            )


def _report(
    results: dict[str, list[Figures]], args: argparse.Namespace, redis_binary: str | None
) -> tuple[str, str]:
    labels = list(results)
    seed_1, seed_w = results[labels[0]], results[labels[1]]
    rows = []
    lines = []
    for label, runs in results.items():
        # Ratios are taken within each run (the targets share its machine load), then the median.
        x1 = statistics.median(f.rps / s.rps for f, s in zip(runs, seed_1, strict=True))
        xw = statistics.median(f.rps / s.rps for f, s in zip(runs, seed_w, strict=True))
        rps = statistics.median(f.rps for f in runs)
        p50 = statistics.median(f.p50_ms for f in runs)
        p99 = statistics.median(f.p99_ms for f in runs)
        bad = sum(f.non2xx + f.socket_errors for f in runs)
        lost = sum(f.lost for f in runs)
        answered = sum(f.ok for f in runs)
        each = " / ".join(f"{f.rps:,.0f}" for f in runs)
        rows.append(
            f"| {label} | **{rps:,.0f}** ({each}) | **{x1:.1f}x** | {xw:.1f}x | {p50:.1f} ms "
            f"| {p99:.1f} ms | {bad} | {lost:,} of {answered:,} |"
        )
        lines.append(
            f"{label}: {rps:,.0f} req/s ({x1:.1f}x / {xw:.1f}x), p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms, non-2xx {bad}, 202 not in Redis {lost}"
        )
    command = (
        f"python -m bench.http.run --runs {args.runs} --duration {args.duration:g} "
        f"--warmup {args.warmup:g} --connections {args.connections} --workers {args.workers}"
    )
    markdown = "\n".join(
        [
            "Accepting one small task over HTTP (a ~90-byte JSON payload), under load from wrk "
            f"(one thread, {args.connections} connections, a {args.warmup:g} s warm-up then "
            f"{args.duration:g} s), on the same machine as the servers and Redis. Figures are "
            f"medians of {args.runs} runs; the targets take turns within each run, each on an "
            "emptied Redis, and the ratios are taken within each run before their median, so "
            "they hold even when the machine is busy (the absolute figures do not).",
            "",
            f"| target | req/s (each run) | vs seed, 1 process | vs seed, {args.workers} processes "
            "| p50 | p99 | non-2xx | 202s whose task is not in Redis |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"- Command: `{command}` (needs `wrk`: `apt-get install -y wrk`).",
            "- Servers: granian (HTTP/1.1, uvloop) for every target; the seed design once as it "
            f"is written (one process) and once with the {args.workers} processes Spillway gets, "
            "for a like-for-like comparison. The seed design is `bench/http/seed_app.py` "
            "(its `POST /process` verbatim: pydantic model, "
            "`BackgroundTasks`, a module-level sync redis-py client, `XADD MAXLEN ~ 100000` after "
            "the 202); Spillway is `spillway.api.serve` (what `spillway api` runs) serving "
            "`bench/http/spillway_app.py`, writing each task durably (record + stream entry, "
            "idempotency and backlog checks, one Lua script) before its 202.",
            "- The last column counts 202 answers whose task Redis did not hold afterwards "
            "(for the seed, one second after the load stopped).",
            "- Redis: the embedded throw-away server on loopback, AOF on (`appendfsync everysec`).",
            f"- Measured: {machine(redis_binary)}.",
        ]
    )
    return "\n".join(lines), markdown


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="server processes per target")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report = run(args)
    print(report.summary)
    if not args.no_write:
        update_section(report.title, report.markdown)
        print(f"updated the {TITLE!r} section of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
