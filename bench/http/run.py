"""HTTP accept: the seed's ``POST /process`` beside Spillway's accept routes, under wrk.

    python -m bench.http.run [--runs 3] [--duration 10] [--warmup 2] [--connections 64 256]
                             [--workers 2] [--no-write]

Starts a throw-away redis-server (AOF on, fsync every second), the seed-faithful baseline
(`bench.http.seed_app`, FastAPI + BackgroundTasks + sync redis-py, 202 before the write),
Spillway's API (`spillway.api.serve`, what `spillway api` runs) and the ceiling (the same
uvicorn server answering 202 with no work, `bench.http.ceiling_app`), all under uvicorn,
on free loopback ports, and two rows for the analysis only: Spillway with its write stubbed
out, and the floor (the ceiling's server plus one XADD per request, `bench.http.floor_app`).
Each run measures every target in turn with wrk (one thread, each of `--connections`, a
warm-up, then `--duration` seconds) on an emptied Redis, then checks what reached Redis:
every 202 of Spillway's and of the floor's must be in its stream; for the seed it counts
the 202s whose task is not in the stream one second after the load stopped. Every
process it started is stopped by its PID. Prints a table and writes the "HTTP accept"
section of docs/benchmarks.md and docs/benchmarks-data/http.json (for `bench.chart`).
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
import psutil
import redis

from bench import DOC, ROOT, Report, machine, standalone
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
# The ceiling runs on the very server `serve` builds: same uvicorn options, same process count.
_SERVE_CEILING = (
    "import sys; from spillway.api.serve import server; "
    "server(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]), workers=int(sys.argv[3]))"
    ".serve()"
)
RESULTS = ROOT / "docs" / "benchmarks-data" / "http.json"
SEED, SPILLWAY, STUB, FLOOR, CEILING = "seed", "spillway", "stub", "floor", "ceiling"
CEILING_APP = "bench.http.ceiling_app:app"
DIRECT_CEILING_APP = "bench.http.ceiling_app:direct"
FLOOR_APP = "bench.http.floor_app:app"
FLOOR_STREAM = "floor"  # floor_app's stream: one entry per 202
ANALYSIS = "analysis only:"  # rows that explain the others: in the tables, not in the chart


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
    cwd: Path | None = None  # where it runs (bench.ab runs another checkout's servers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        log = (log_dir / f"{self.name}.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [arg.replace("{port}", str(self.port)) for arg in self.command],
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
            cwd=self.cwd,
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
    """One thing to load: a server, a path and the body to POST; `kind` is seed, spillway,
    stub, floor or ceiling (what reached Redis is checked for seed, spillway and floor)."""

    label: str
    server: Server
    path: str
    body: bytes
    kind: str


@dataclass
class Figures:
    """One wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int
    ok: int
    lost: int = 0  # 202s whose task was not in Redis afterwards
    checked: bool = True  # False for the targets that write nothing (nothing to check)
    # CPU microseconds per request (user + system) of the server's processes, Redis and wrk
    cpu_us: dict[str, float] = field(default_factory=dict)


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
        max_ms=raw["max_us"] / 1000,
        non2xx=raw["non2xx"],
        socket_errors=raw["errors"],
        ok=raw["ok"],
    )


def written(target: Target, redis_url: str) -> int:
    """Tasks of `target` in Redis now."""
    if target.kind == SPILLWAY:
        return asyncio.run(_spillway_backlog(redis_url))
    client = redis.Redis.from_url(redis_url)
    try:
        if target.kind == FLOOR:  # it writes before answering: nothing is left to wait for
            return int(client.xlen(FLOOR_STREAM))
        time.sleep(1.0)  # the seed writes after answering: give its background writes 1 s
        return int(client.xlen(SEED_STREAM))
    finally:
        client.close()


async def _spillway_backlog(redis_url: str) -> int:
    async with Spillway(Settings(redis_url=redis_url, prefix=PREFIX)) as app:
        return await app.broker.work.backlog(["default"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def measure(
    target: Target, server: EmbeddedRedis, args: argparse.Namespace, connections: int
) -> Figures:
    redis_url = server.url
    flush = redis.Redis.from_url(redis_url)
    try:
        flush.flushall()
    finally:
        flush.close()
    url = target.server.url + target.path
    warm = wrk(url, target.body, args.warmup, connections)
    assert target.server.process is not None  # noqa: S101 - started before measuring
    pids = {"server": target.server.process.pid, "redis": server.pid}
    before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    wrk_before = os.times()
    figures = wrk(url, target.body, args.duration, connections)
    wrk_after = os.times()
    requests = max(1.0, figures.rps * args.duration)
    figures.cpu_us = {k: (cpu_seconds(pid) - before[k]) / requests * 1e6 for k, pid in pids.items()}
    wrk_cpu = (wrk_after.children_user + wrk_after.children_system) - (
        wrk_before.children_user + wrk_before.children_system
    )
    figures.cpu_us["wrk"] = wrk_cpu / requests * 1e6
    figures.checked = target.kind in (SEED, SPILLWAY, FLOOR)
    if figures.checked:
        figures.lost = max(0, warm.ok + figures.ok - written(target, redis_url))
    return figures


def seed_server(redis_url: str, workers: int) -> Server:
    return Server(
        f"seed-{workers}",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--workers",
            str(workers),
            "--http",
            "httptools",
            "--ws",
            "none",
            "--loop",
            "uvloop",
            "--no-access-log",
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


def _granian(app: str, workers: int, factory: bool = False) -> list[str]:
    """granian serving `app` as Spillway served its API before it moved to uvicorn: HTTP/1.1,
    uvloop, no websockets, a 64 KiB read buffer."""
    return [
        sys.executable, "-m", "granian", "--interface", "asgi", "--workers", str(workers),
        "--http", "1", "--no-ws", "--loop", "uvloop", "--http1-buffer-size", "65536",
        "--log-level", "warning", *(["--factory"] if factory else []),
        "--host", "127.0.0.1", "--port", "{port}", app,
    ]  # fmt: skip


def granian_spillway_server(redis_url: str, workers: int) -> Server:
    """Spillway's API, the same application, under granian: for the analysis only (the
    server choice, measured in the same run)."""
    server = spillway_server(redis_url, workers)
    server.name = f"spillway-granian-{workers}"
    server.command = _granian("spillway.api.serve:build", workers, factory=True)
    server.env["SPILLWAY_API_APP"] = "bench.http.spillway_app:app"
    return server


def granian_ceiling_server(workers: int) -> Server:
    return Server(f"ceiling-granian-{workers}", _granian(CEILING_APP, workers), {})


def stub_server(redis_url: str, workers: int) -> Server:
    """Spillway's API with the Redis write replaced by an instant "ok": for the analysis only
    (what the HTTP, JSON and validation work costs without the durable write)."""
    server = spillway_server(redis_url, workers)
    server.name = f"spillway-stub-{workers}"
    server.env["BENCH_STUB_WRITE"] = "1"
    return server


def ceiling_server(workers: int) -> Server:
    return Server(
        f"ceiling-{workers}",
        [sys.executable, "-c", _SERVE_CEILING, CEILING_APP, "{port}", str(workers)],
        {},
    )


def direct_ceiling_server(workers: int) -> Server:
    """The ceiling answering its POSTs from the protocol, without ASGI
    (`spillway.api.uvicorn_fast`), as Spillway answers its accept routes: for the analysis
    only."""
    return Server(
        f"direct-ceiling-{workers}",
        [sys.executable, "-c", _SERVE_CEILING, DIRECT_CEILING_APP, "{port}", str(workers)],
        {},
    )


def floor_server(redis_url: str, workers: int) -> Server:
    """The ceiling's server plus one coalesced XADD per request before the 202: for the
    analysis only (what any design that writes to Redis before answering costs here)."""
    return Server(
        f"floor-{workers}",
        [sys.executable, "-c", _SERVE_CEILING, FLOOR_APP, "{port}", str(workers)],
        {"FLOOR_REDIS_URL": redis_url},
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
    results: dict[int, dict[str, list[Figures]]] = {}
    w = args.workers
    load_before = os.getloadavg()[0]
    with EmbeddedRedis(appendonly=True) as server:
        seed_1, seed_w = seed_server(server.url, 1), seed_server(server.url, w)
        spill = spillway_server(server.url, w)
        stub = stub_server(server.url, w)
        floor = floor_server(server.url, w)
        ceiling = ceiling_server(w)
        spill_granian = granian_spillway_server(server.url, w)
        ceiling_granian = granian_ceiling_server(w)
        ceiling_direct = direct_ceiling_server(w)
        targets = [
            Target(
                "seed design, 1 process (as the seed runs it)", seed_1, "/process", seed_body, SEED
            ),
            Target(f"seed design, {w} processes", seed_w, "/process", seed_body, SEED),
            Target(f"Spillway `POST /tasks`, {w} processes", spill, "/tasks", task_body, SPILLWAY),
            Target(
                f"Spillway `POST /process` (the seed's route and body), {w} processes",
                spill,
                "/process",
                seed_body,
                SPILLWAY,
            ),
            Target(
                f"{ANALYSIS} Spillway `POST /tasks` with the Redis write stubbed out "
                f"(not durable), {w} processes",
                stub,
                "/tasks",
                task_body,
                STUB,
            ),
            Target(
                f"{ANALYSIS} the ceiling's server plus the least durable write (one coalesced "
                f"XADD per request, raw connection), {w} processes",
                floor,
                "/tasks",
                task_body,
                FLOOR,
            ),
            Target(
                f"ceiling: the same server answering 202 with no work, {w} processes",
                ceiling,
                "/tasks",
                task_body,
                CEILING,
            ),
            Target(
                f"{ANALYSIS} Spillway `POST /tasks` under granian (the server it ran on "
                f"before), {w} processes",
                spill_granian,
                "/tasks",
                task_body,
                SPILLWAY,
            ),
            Target(
                f"{ANALYSIS} granian answering 202 with no work (its own ceiling), {w} processes",
                ceiling_granian,
                "/tasks",
                task_body,
                CEILING,
            ),
            Target(
                f"{ANALYSIS} the same server answering 202 with no work from the protocol, "
                f"without ASGI (as Spillway answers its accept routes), {w} processes",
                ceiling_direct,
                "/tasks",
                task_body,
                CEILING,
            ),
        ]
        servers = [
            *(seed_1, seed_w, spill, stub, floor, ceiling),
            *(spill_granian, ceiling_granian, ceiling_direct),
        ]
        with started(servers, log_dir):
            _measure_all(targets, server, args, results)
        redis_binary = server.binary
    args.load = (load_before, os.getloadavg()[0])
    summary, markdown = _report(results, args, redis_binary)
    if not getattr(args, "no_write", False):  # --no-write leaves docs/ as it is
        _save(results)
    return Report(TITLE, summary, markdown)


def _measure_all(
    targets: list[Target],
    server: EmbeddedRedis,
    args: argparse.Namespace,
    results: dict[int, dict[str, list[Figures]]],
) -> None:
    """Every target in turn, `args.runs` times, so they share the machine's weather."""
    for i in range(args.runs):
        for connections in args.connections:
            for target in targets:
                figures = measure(target, server, args, connections)
                results.setdefault(connections, {}).setdefault(target.label, []).append(figures)
                _progress(i, args.runs, connections, target.label, figures)


def _progress(i: int, runs: int, connections: int, label: str, figures: Figures) -> None:
    print(
        f"run {i + 1}/{runs}, {connections} connections, {label}: {figures.rps:,.0f} req/s, "
        f"p50 {figures.p50_ms:.1f} ms, p99 {figures.p99_ms:.1f} ms, "
        f"non-2xx {figures.non2xx}, 202 not in Redis {figures.lost}",
        flush=True,
    )


def _ratio(runs: list[Figures], base: list[Figures]) -> float:
    """The median of the per-run ratios: targets within one run share the machine's load."""
    return statistics.median(f.rps / b.rps for f, b in zip(runs, base, strict=True))


def _table(by_label: dict[str, list[Figures]], workers: int) -> list[str]:
    labels = list(by_label)
    seed_1, seed_w = by_label[labels[0]], by_label[labels[1]]
    # Each row against its own server's ceiling: uvicorn's (the seventh row), or granian's
    # (the last) for the granian rows.
    ceilings = {"uvicorn": by_label[labels[6]], "granian": by_label[labels[-1]]}
    rows = [
        f"| target | req/s (each run) | vs seed, 1 process | vs seed, {workers} processes "
        "| vs its server's ceiling | p50 | p99 | max | CPU us per request: server + Redis + wrk "
        "| non-2xx | 202s whose task is not in Redis |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, runs in by_label.items():
        ceiling = ceilings["granian" if "granian" in label else "uvicorn"]
        rps = statistics.median(f.rps for f in runs)
        each = " / ".join(f"{f.rps:,.0f}" for f in runs)
        bad = sum(f.non2xx + f.socket_errors for f in runs)
        checked = "n/a (writes nothing)" if not runs[0].checked else (
            f"{sum(f.lost for f in runs):,} of {sum(f.ok for f in runs):,}"
        )  # fmt: skip
        cpu = {k: statistics.median(f.cpu_us[k] for f in runs) for k in runs[0].cpu_us}
        rows.append(
            f"| {label} | **{rps:,.0f}** ({each}) | **{_ratio(runs, seed_1):.1f}x** "
            f"| {_ratio(runs, seed_w):.1f}x | {_ratio(runs, ceiling):.2f}x "
            f"| {statistics.median(f.p50_ms for f in runs):.1f} ms "
            f"| {statistics.median(f.p99_ms for f in runs):.1f} ms "
            f"| {statistics.median(f.max_ms for f in runs):.0f} ms "
            f"| {cpu['server']:.0f} + {cpu['redis']:.0f} + {cpu['wrk']:.0f} "
            f"= {sum(cpu.values()):.0f} | {bad} | {checked} |"
        )
    return rows


def _verdicts(results: dict[int, dict[str, list[Figures]]]) -> list[str]:
    """Issue 4's HTTP targets, from the `POST /tasks` row (64 connections where measured)."""
    connections = 64 if 64 in results else min(results)
    by_label = results[connections]
    # The rows in `run`'s order (this unpacking fails loudly if that changes).
    labels = list(by_label)
    seed_label, _, spill_label, _, stub_label, floor_label, ceiling_label = labels[:7]
    granian_spill, granian_ceiling, direct_ceiling = (by_label[label] for label in labels[7:10])
    spill, ceiling = by_label[spill_label], by_label[ceiling_label]
    vs_seed = _ratio(spill, by_label[seed_label])
    vs_ceiling = _ratio(spill, ceiling)
    p99 = statistics.median(f.p99_ms for f in spill)
    bad = sum(f.non2xx + f.socket_errors for c in results.values() for f in c[spill_label])
    lost = sum(f.lost for c in results.values() for f in c[spill_label])

    def met(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    cpu = {
        label: sum(statistics.median(f.cpu_us[k] for f in runs) for k in runs[0].cpu_us)
        for label, runs in by_label.items()
    }
    seed_server = statistics.median(f.cpu_us["server"] for f in by_label[seed_label])
    ceiling_cpu, spill_cpu, stub_cpu = cpu[ceiling_label], cpu[spill_label], cpu[stub_label]
    floor_cpu = cpu[floor_label]
    stub_ratio = _ratio(by_label[stub_label], ceiling)
    floor_ratio = _ratio(by_label[floor_label], ceiling)
    spill_redis = statistics.median(f.cpu_us["redis"] for f in spill)
    budget = ceiling_cpu / 0.7
    seed_rps = statistics.median(f.rps for f in by_label[seed_label])
    ceiling_rps = statistics.median(f.rps for f in ceiling)
    stub_rps = statistics.median(f.rps for f in by_label[stub_label])
    floor_rps = statistics.median(f.rps for f in by_label[floor_label])
    # Wall time per request: the ceiling's, plus what each analysis row adds to it.
    within = 1 / (1 / stub_rps + 1 / floor_rps - 1 / ceiling_rps)
    bound = (2e6 / spill_cpu) / (1e6 / seed_server)
    if stub_cpu > budget:
        verdict = (
            "so Spillway's HTTP, JSON and validation work alone exceeds the 0.7x budget on "
            "this machine, before anything is written"
        )
    else:
        verdict = f"which leaves {budget - stub_cpu:.0f} us for the durable write"
    if floor_ratio < 0.7:
        floor_verdict = (
            "so on this machine no design that writes to Redis before its 202 reaches 0.7x, "
            "however little else it does"
        )
    else:
        floor_verdict = (
            f"which leaves {budget - floor_cpu:.0f} us for everything but the write itself"
        )
    reach = within / ceiling_rps
    ceiling_verdict = met(vs_ceiling >= 0.7)
    if vs_ceiling < 0.7 <= reach:
        ceiling_verdict += f" (within reach: {reach:.2f}x, below)"
    elif vs_ceiling < 0.7:
        ceiling_verdict = (
            f"**missed**, and out of reach here: a durable accept of this contract can reach "
            f"{reach:.2f}x at most (below)"
        )
    return [
        "| target (Spillway `POST /tasks`) | measured | |",
        "| --- | --- | --- |",
        f"| >= 10x the seed-faithful baseline | {vs_seed:.1f}x | {met(vs_seed >= 10)} |",
        f"| >= 0.7x the same server's no-work ceiling | {vs_ceiling:.2f}x | {ceiling_verdict} |",
        f"| p99 <= 25 ms at {connections} connections | {p99:.1f} ms | {met(p99 <= 25)} |",
        f"| 0 non-2xx (every connection count) | {bad} | {met(bad == 0)} |",
        f"| every 202 durable | {lost} missing | {met(lost == 0)} |",
        "",
        "What CPU time alone allows, from the CPU column: with the 2 CPUs to itself, a "
        "server can answer at most 2,000,000 / (its CPU us per request, Redis and wrk "
        "included) requests/s, and a one-process server at most 1,000,000 / (its own). "
        f"The seed design, one process, costs {seed_server:.0f} us of server CPU per request; "
        f"Spillway {spill_cpu:.0f} us in all, so on CPU alone it can reach about "
        f"**{bound:.1f}x** the seed.",
        "",
        f"Where the rest of the ceiling goes: the ceiling costs {ceiling_cpu:.0f} us per "
        f"request in all, so >= 0.7x allows Spillway at most {budget:.0f} us. The first "
        "analysis row runs Spillway's whole accept path (read the body, strict JSON, validate "
        "the envelope and the payload, build the task, answer) with the Redis write replaced "
        f"by an instant reply: it costs {stub_cpu:.0f} us and reaches {stub_ratio:.2f}x the "
        f"ceiling, {verdict}. The durable write adds {spill_cpu - stub_cpu:.0f} us per "
        f"request, {spill_redis:.0f} us of it in redis-server, which shares the same 2 CPUs. "
        "The second, the floor, is the ceiling's server with the least durable write there "
        "is (one XADD of the raw body per request, coalesced, on a raw connection): even "
        f"with no parsing or validation it costs {floor_cpu:.0f} us and reaches only "
        f"{floor_ratio:.2f}x the ceiling, {floor_verdict}.",
        "",
        "What is within reach: the two analysis rows measure separate costs, and a durable "
        "accept pays both, Spillway's own accept work (the stub's time per request over the "
        "ceiling's) and the least durable write (the floor's over the ceiling's). In wall time "
        "per request (one over the requests/s), added to the ceiling's "
        f"{1e6 / ceiling_rps:.0f} us they make {1e6 / within:.0f} us, "
        f"**{within:,.0f} requests/s**: {within / ceiling_rps:.2f}x the ceiling and "
        f"{within / seed_rps:.1f}x the seed, against Spillway's {vs_ceiling:.2f}x and "
        f"{vs_seed:.1f}x. Past that bound a design must do less per request than Spillway's "
        "accept path does (strict JSON, two validations, idempotency and backlog checks, a "
        "status record beside the stream entry), not write more cleverly.",
        "",
        "The server, measured in the same run: under granian (the two granian rows), the same "
        f"application answered {statistics.median(f.rps for f in granian_spill):,.0f} "
        f"requests/s, {_ratio(granian_spill, by_label[seed_label]):.1f}x the seed, and "
        f"granian's own ceiling was {statistics.median(f.rps for f in granian_ceiling):,.0f}: "
        f"uvicorn answered {_ratio(spill, granian_spill):.2f}x as many of Spillway's "
        f"requests and {_ratio(ceiling, granian_ceiling):.2f}x as many bare ones. A faster "
        "server lowers the ratio to its own ceiling while it raises every absolute figure: "
        f"Spillway under granian was {_ratio(granian_spill, granian_ceiling):.2f}x granian's "
        "ceiling.",
        "",
        "The ceiling without ASGI: Spillway's API answers its accept routes from the protocol "
        "(`spillway.api.uvicorn_fast`), without the ASGI cycle (an event, a task, `receive` and "
        "`send`) that the ceiling's bare application goes through. The same server answering "
        "the same 202 that way (the last row) answered "
        f"{statistics.median(f.rps for f in direct_ceiling):,.0f} requests/s, "
        f"{_ratio(direct_ceiling, ceiling):.2f}x the ceiling; against it Spillway is "
        f"{_ratio(spill, direct_ceiling):.2f}x.",
    ]


def _report(
    results: dict[int, dict[str, list[Figures]]],
    args: argparse.Namespace,
    redis_binary: str | None,
) -> tuple[str, str]:
    lines = []
    for connections, by_label in results.items():
        seed_1 = next(iter(by_label.values()))
        for label, runs in by_label.items():
            lines.append(
                f"{connections} connections, {label}: "
                f"{statistics.median(f.rps for f in runs):,.0f} req/s "
                f"({_ratio(runs, seed_1):.1f}x the seed), "
                f"p99 {statistics.median(f.p99_ms for f in runs):.1f} ms, "
                f"non-2xx {sum(f.non2xx + f.socket_errors for f in runs)}, "
                f"202 not in Redis {sum(f.lost for f in runs)}"
            )
    conns = " ".join(str(c) for c in args.connections)
    command = (
        f"python -m bench.http.run --runs {args.runs} --duration {args.duration:g} "
        f"--warmup {args.warmup:g} --connections {conns} --workers {args.workers}"
    )
    tables: list[str] = []
    for connections, by_label in results.items():
        tables += [f"### {connections} connections", "", *_table(by_label, args.workers), ""]
    markdown = "\n".join(
        [
            "Accepting one small task over HTTP (a ~90-byte JSON payload), under load from wrk "
            f"(one thread, a {args.warmup:g} s warm-up then {args.duration:g} s), on the same "
            f"machine as the servers and Redis. Figures are medians of {args.runs} runs; the "
            "targets take turns within each run, each on an emptied Redis, and the ratios are "
            "taken within each run before their median, so they hold even when the machine is "
            "busy (the absolute figures do not).",
            "",
            "![HTTP accept: req/s per target](benchmarks.png)",
            "",
            *tables,
            "### Against issue 4's targets",
            "",
            *_verdicts(results),
            "",
            f"- Command: `{command}` (needs `wrk`: `apt-get install -y wrk`).",
            "- Servers: uvicorn (HTTP/1.1 on httptools, uvloop) for every target but the two "
            "granian rows (granian 2, HTTP/1.1, uvloop, a 64 KiB read buffer); the seed "
            "design once as it is written (one process) and once with the "
            f"{args.workers} processes Spillway gets, for a like-for-like comparison. "
            "The seed design is `bench/http/seed_app.py` "
            "(its `POST /process` verbatim: pydantic model, "
            "`BackgroundTasks`, a module-level sync redis-py client, `XADD MAXLEN ~ 100000` after "
            "the 202); Spillway is `spillway.api.serve` (what `spillway api` runs) serving "
            "`bench/http/spillway_app.py`, writing each task durably (record + stream entry, "
            "idempotency and backlog checks, one Lua script) before its 202, its accept "
            "routes answered by the protocol without an ASGI cycle (`spillway.api.uvicorn_fast`). "
            "The ceiling is "
            "`bench/http/ceiling_app.py` on `spillway.api.serve.server`, the very uvicorn "
            "server `serve` runs: it reads the body and sends the same 202, doing nothing else.",
            "- The analysis rows are not ways to run Spillway; they show where the gap to the "
            "ceiling lies. The first is Spillway's API with `BENCH_STUB_WRITE=1` "
            "(`bench/http/spillway_app.py`): every accept answers at once and writes nothing, "
            "so it shows what the accept path costs without the durable write. The second, the "
            "floor, is `bench/http/floor_app.py` on the ceiling's server: each `POST` reads the "
            "body and awaits `XADD floor * d <body>` before the ceiling's 202, the XADDs of "
            "concurrent requests packed by hiredis into one write on one raw asyncio "
            "connection per process, so it shows what writing to Redis before answering costs, "
            "whatever the design; every one of its 202s must be an entry in its stream.",
            "- The last column counts 202 answers whose task Redis did not hold afterwards "
            "(for the seed, one second after the load stopped).",
            "- CPU per request: user + system seconds of the server's processes, of "
            "redis-server and of wrk over the measured seconds, divided by the requests answered "
            "(medians). On a machine of their own, 2 CPUs could serve at most about "
            "2,000,000 / (that sum) requests per second.",
            "- Redis: the embedded throw-away server on loopback, AOF on (`appendfsync everysec`).",
            f"- The machine is shared ({os.cpu_count()} CPUs for wrk, the servers, Redis and "
            f"other work): load average (1 min) {args.load[0]:.1f} when the runs started, "
            f"{args.load[1]:.1f} when they ended.",
            f"- Measured: {machine(redis_binary)}.",
        ]
    )
    return "\n".join(lines), markdown


def _save(results: dict[int, dict[str, list[Figures]]]) -> None:
    """Medians per connection count and target, for `bench.chart`."""
    data = {
        str(connections): {
            label: {
                "rps": statistics.median(f.rps for f in runs),
                "vs_seed": _ratio(runs, next(iter(by_label.values()))),
                "p99_ms": statistics.median(f.p99_ms for f in runs),
            }
            for label, runs in by_label.items()
            if not label.startswith(ANALYSIS)
        }
        for connections, by_label in results.items()
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--workers", type=int, default=2, help="server processes per target")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
