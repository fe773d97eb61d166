"""End to end latency at a fixed offered load: POST /tasks at 1,000 and 5,000 tasks/s.

    python -m bench.latency [--rates 1000 5000] [--seconds 10] [--runs 3] [--no-write]

Starts a throw-away redis-server (AOF on, fsync every second), Spillway's API
(`spillway.api.serve`, 2 processes) and ONE worker process (`spillway worker`, concurrency
100), all serving `bench/http/spillway_app.py`. An open-loop generator (`bench.http.openloop`)
offers each rate for `--seconds`; each task's latency runs from when its request was *due* to
the `finished_at` the worker's finish script stored (both read from this machine's clock;
Redis stores milliseconds, so each figure is within 1 ms). Every answered task must have
succeeded. Every process it started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from bench import DOC, ROOT, Report, machine, standalone
from bench.http.openloop import Answer, offer
from bench.http.run import PAYLOAD, PREFIX, Server, spillway_server
from spillway.broker.keys import Keys
from spillway.embedded import AOF_REWRITE_PERCENTAGE, EmbeddedRedis

__all__ = [
    "TITLE", "Stack", "aof_base_bytes", "measure_rate", "offer_tasks", "rewrite_aof", "run",
    "stack", "tree_cpu", "wait_finished",
]  # fmt: skip

TITLE = "End to end latency"
APP = "bench.http.spillway_app:app"
API_PROCESSES = 2
WORKER_CONCURRENCY = 100
BODY = json.dumps({"type": "resize", "payload": PAYLOAD}).encode()
RESULTS = ROOT / "docs" / "benchmarks-data"


@dataclass
class Stack:
    """Redis, the API and one worker, started by `stack()`."""

    redis: EmbeddedRedis
    api: Server
    worker: subprocess.Popen[bytes]

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by the API, the worker and Redis; and, in
        "aof_rewrites", the part of Redis's that its forked children (AOF rewrites) used."""
        if self.api.process is None:
            raise RuntimeError("the API is not running")
        forks = _forks_cpu(self.redis.pid)
        return {
            "api": tree_cpu(self.api.process.pid),
            "worker": tree_cpu(self.worker.pid),
            "redis": tree_cpu(self.redis.pid),
            "aof_rewrites": forks,
        }

    def empty(self) -> None:
        """Delete the finished tasks' records, then rewrite the AOF and wait for it: the next
        run starts as the first did (the records are kept for SPILLWAY_RESULT_TTL, and a run
        after a million earlier tasks would measure the rewriting of their records)."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            pattern = "{" + PREFIX + ":*:task:*"
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=10_000):
                batch.append(key)
                if len(batch) >= 10_000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
            while client.info("persistence")["aof_rewrite_in_progress"]:
                time.sleep(0.1)  # one already under way: BGREWRITEAOF would only queue
            client.bgrewriteaof()  # forks before it replies: in progress from here
            while client.info("persistence")["aof_rewrite_in_progress"]:
                time.sleep(0.1)
        finally:
            client.close()

    def aof(self) -> tuple[int, int]:
        """Redis's AOF size (bytes) and how many times it has forked (each an AOF rewrite:
        the embedded server takes no snapshots)."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            persistence, stats = client.info("persistence"), client.info("stats")
        finally:
            client.close()
        return int(persistence["aof_current_size"]), int(stats["total_forks"])


def tree_cpu(pid: int) -> float:
    """A process tree's CPU seconds: each live process's own, and what its exited children
    used (for Redis, the AOF rewrites it forked: while one runs, as a live child)."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def rewrite_aof(client: redis.Redis) -> float:
    """Rewrite the AOF now (``BGREWRITEAOF``); the seconds until Redis reports it done."""
    started = time.monotonic()
    client.bgrewriteaof()
    while True:
        info = client.info("persistence")
        if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]):
            return time.monotonic() - started
        time.sleep(0.005)


def aof_base_bytes(server: EmbeddedRedis) -> int:
    """The size of the AOF's base file, which the last rewrite wrote."""
    return sum(f.stat().st_size for f in (server.dir / "appendonlydir").glob("*.base.*"))


def _forks_cpu(pid: int) -> float:
    """The CPU seconds of a process's children, live and exited: its tree's less its own."""
    own = psutil.Process(pid).cpu_times()
    return tree_cpu(pid) - own.user - own.system


def _env(redis_url: str, pythonpath: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
    return env | {
        "PYTHONPATH": pythonpath or str(ROOT),
        "SPILLWAY_REDIS_URL": redis_url,
        "SPILLWAY_PREFIX": PREFIX,
        "SPILLWAY_DEFAULT_TASK_TYPE": "resize",
    }


def worker_command(concurrency: int = WORKER_CONCURRENCY) -> list[str]:
    return [
        sys.executable, "-m", "spillway", "worker", APP,
        "--concurrency", str(concurrency), "--log-level", "warning",
    ]  # fmt: skip


@contextlib.contextmanager
def stack(
    log_dir: Path,
    concurrency: int = WORKER_CONCURRENCY,
    redis_args: Sequence[str] = (),
    pythonpath: str | None = None,
    api_env: Mapping[str, str] | None = None,
    api_processes: int = API_PROCESSES,
) -> Iterator[Stack]:
    """Start Redis, the API and the worker; stop them all by PID on the way out. With
    `pythonpath` (`bench.budget_ab`: another tree's ``src`` first), the API and the worker
    import what it names; `api_env` adds to the API's environment (`bench.linger`);
    `api_processes` is how many processes the API runs (`bench.budget`)."""
    with EmbeddedRedis(appendonly=True, extra_args=redis_args) as server:
        api = spillway_server(server.url, api_processes)
        if pythonpath:
            api.env |= {"PYTHONPATH": pythonpath}
        if api_env:
            api.env |= dict(api_env)
        log = (log_dir / "worker.log").open("wb")
        worker = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            worker_command(concurrency),
            env=_env(server.url, pythonpath),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            api.start(log_dir)
            yield Stack(server, api, worker)
        finally:
            api.stop()
            worker.terminate()
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


@dataclass
class RateRun:
    """One rate offered once."""

    rate: float
    seconds: float
    answered: int
    bad: int  # non-2xx answers and socket errors
    accept_ms: list[float]  # due -> 202, per task
    done_ms: list[float]  # due -> finished_at, per task
    queue_ms: list[float]  # created_at -> finished_at (Redis clock), per task
    cpu: dict[str, float]  # CPU seconds over the run, until every task was done
    generator_cpu: float
    due: list[float]  # when each task's request was due (wall clock, s), as done_ms
    rewrites: list[tuple[float, float]]  # AOF rewrites during the run: (start, end), wall clock
    aof_bytes: int | None  # what the AOF grew by over the run; None if a rewrite reset it


def _aof_rewrites(url: str, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    """Note when each AOF rewrite runs (INFO persistence, every 50 ms) until `stop`."""
    client = redis.Redis.from_url(url)
    started: float | None = None
    try:
        while not stop.wait(0.05):
            running = client.info("persistence")["aof_rewrite_in_progress"] == 1
            if running and started is None:
                started = time.time()
            elif not running and started is not None:
                out.append((started, time.time()))
                started = None
    finally:
        if started is not None:
            out.append((started, time.time()))
        client.close()


def measure_rate(
    s: Stack, rate: float, seconds: float, timeout: float = 120.0, body: bytes = BODY
) -> RateRun:
    """Offer `rate` tasks/s for `seconds` (each request `body`), wait until all are done, read
    their records."""
    client = redis.Redis.from_url(s.redis.url)
    rewrites: list[tuple[float, float]] = []
    stop = threading.Event()
    watch = threading.Thread(target=_aof_rewrites, args=(s.redis.url, stop, rewrites))
    watch.start()
    try:
        aof_before, forks_before = s.aof()
        before = s.cpu_seconds()
        gen_before = time.process_time()
        answers, errors = offer_tasks(s.api.port, rate, seconds, body)
        gen_cpu = time.process_time() - gen_before
        ids = [a.task_id for a in answers if a.task_id]
        records = wait_finished(client, ids, timeout)
        after = s.cpu_seconds()
        aof_after, forks_after = s.aof()
    finally:
        stop.set()
        watch.join()
        client.close()
    aof_bytes = aof_after - aof_before if forks_after == forks_before else None
    done, queue, accept, due = [], [], [], []
    by_id = {a.task_id: a for a in answers if a.task_id}
    for task_id, (status, created, finished) in records.items():
        if status != b"succeeded":
            raise RuntimeError(f"task {task_id} ended {status!r}, not succeeded")
        answer = by_id[task_id]
        done.append(int(finished) - answer.due * 1000)
        queue.append(float(int(finished) - int(created)))
        accept.append(answer.seconds * 1000)
        due.append(answer.due)
    bad = errors + sum(1 for a in answers if not 200 <= a.status < 300)
    return RateRun(
        rate, seconds, len(ids), bad, accept, done, queue,
        {k: after[k] - before[k] for k in after}, gen_cpu, due, rewrites, aof_bytes,
    )  # fmt: skip


def offer_tasks(
    port: int, rate: float, seconds: float, body: bytes = BODY
) -> tuple[list[Answer], int]:
    """POST `body` to /tasks on 127.0.0.1:`port` at `rate` for `seconds` (`offer`, on uvloop)."""
    coro = offer("127.0.0.1", port, "/tasks", body, rate=rate, seconds=seconds)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def wait_finished(
    client: redis.Redis, ids: list[str], timeout: float
) -> dict[str, tuple[bytes, bytes, bytes]]:
    """(status, created_at, finished_at) of every task, once all have finished."""
    keys = Keys(PREFIX)
    deadline = time.monotonic() + timeout
    pending = list(ids)
    found: dict[str, tuple[bytes, bytes, bytes]] = {}
    while pending:
        pipe = client.pipeline(transaction=False)
        for task_id in pending:
            pipe.hmget(keys.for_task(task_id).task(task_id), "status", "created_at", "finished_at")
        still = []
        for task_id, (status, created, finished) in zip(pending, pipe.execute(), strict=True):
            if finished:
                found[task_id] = (status, created, finished)
            else:
                still.append(task_id)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} tasks not finished after {timeout:g} s")
            time.sleep(0.2)
    return found


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def run(args: argparse.Namespace | None = None) -> Report:
    """Measure (with the default options unless given); the section for docs/benchmarks.md."""
    args = args or parser().parse_args([])
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-latency-"))
    print(f"server logs: {log_dir}", flush=True)
    results: dict[float, list[RateRun]] = {}
    load_before = os.getloadavg()[0]
    redis_args = [arg for name, value in args.redis_config for arg in (f"--{name}", value)]
    with stack(log_dir, redis_args=redis_args, api_processes=args.api_processes) as s:
        measure_rate(s, min(args.rates), 2)  # warm-up: connections, imports, scripts
        for i in range(args.runs):
            for rate in args.rates:
                s.empty()
                r = measure_rate(s, rate, args.seconds)
                results.setdefault(rate, []).append(r)
                print(
                    f"run {i + 1}/{args.runs} {rate:,.0f}/s: accept p99 "
                    f"{pct(r.accept_ms, 99):.1f} ms, done p50 {pct(r.done_ms, 50):.1f} ms "
                    f"p99 {pct(r.done_ms, 99):.1f} ms, {r.answered:,} tasks, bad {r.bad}",
                    flush=True,
                )
        binary = s.redis.binary
    args.load = (load_before, os.getloadavg()[0])
    if args.redis_config or args.api_processes != API_PROCESSES:
        args.no_write = True
    if not getattr(args, "no_write", False):  # --no-write leaves docs/ as it is
        _save(results)
    return _report(results, args, binary)


def _save(results: dict[float, list[RateRun]]) -> None:
    """The medians, for bench.chart."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        str(int(rate)): {
            "done_p50_ms": statistics.median(pct(r.done_ms, 50) for r in runs),
            "done_p99_ms": statistics.median(pct(r.done_ms, 99) for r in runs),
            "accept_p99_ms": statistics.median(pct(r.accept_ms, 99) for r in runs),
        }
        for rate, runs in results.items()
    }
    (RESULTS / "latency.json").write_text(json.dumps(data, indent=2) + "\n")


#: How long after an AOF rewrite ends its tasks still count as in its shadow: the backlog it
#: left takes this long to drain at the rates measured (docs/benchmarks.md#end-to-end-latency).
REWRITE_SHADOW_S = 2.0


def outside_rewrites(r: RateRun) -> list[float]:
    """Accept-to-done (ms) of the tasks due while no AOF rewrite ran or had just ended."""
    windows = [(start, end + REWRITE_SHADOW_S) for start, end in r.rewrites]
    return [
        ms
        for ms, due in zip(r.done_ms, r.due, strict=True)
        if not any(start <= due <= end for start, end in windows)
    ]


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    med = statistics.median(values)
    return f"**{fmt.format(med)}** ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _report(
    results: dict[float, list[RateRun]], args: argparse.Namespace, binary: str | None
) -> Report:
    rows, lines = [], []
    for rate, runs in results.items():
        achieved = [r.answered / r.seconds for r in runs]
        accept99 = [pct(r.accept_ms, 99) for r in runs]
        done50 = [pct(r.done_ms, 50) for r in runs]
        done99 = [pct(r.done_ms, 99) for r in runs]
        done_max = [max(r.done_ms) for r in runs]
        queue99 = [pct(r.queue_ms, 99) for r in runs]
        bad = sum(r.bad for r in runs)
        tasks = sum(r.answered for r in runs)
        rewrites = sum(len(r.rewrites) for r in runs)
        rewriting = sum(end - start for r in runs for start, end in r.rewrites)
        clear = [outside_rewrites(r) for r in runs]
        clear99 = [pct(c, 99) for c in clear if c]
        shadowed = 1 - sum(len(c) for c in clear) / max(1, tasks)
        rows.append(
            f"| {rate:,.0f} | {statistics.median(achieved):,.0f} | {_spread(accept99)} ms "
            f"| {_spread(done50)} ms | {_spread(done99)} ms | {statistics.median(done_max):.0f} ms "
            f"| {_spread(queue99)} ms | {rewrites} ({rewriting:.1f} s) "
            f"| {_spread(clear99) + ' ms' if clear99 else 'none'} ({shadowed:.0%}) "
            f"| {bad} | {tasks:,} |"
        )
        lines.append(
            f"{rate:,.0f} tasks/s: accept-to-done p50 {statistics.median(done50):.1f} ms, "
            f"p99 {statistics.median(done99):.1f} ms (accept p99 "
            f"{statistics.median(accept99):.1f} ms), bad {bad}"
        )
    target = min(results, key=lambda r: abs(r - 1000))
    p99 = statistics.median(pct(r.done_ms, 99) for r in results[target])
    verdict = "met" if p99 <= 25 else "missed"
    rates = " ".join(f"{r:g}" for r in args.rates)
    config = "".join(f" --redis-config {name} {value}" for name, value in args.redis_config)
    if args.api_processes != API_PROCESSES:
        config += f" --api-processes {args.api_processes}"
    command = (
        f"python -m bench.latency --rates {rates} --seconds {args.seconds:g} --runs {args.runs}"
        + config
    )
    markdown = "\n".join(
        [
            "Tasks offered over HTTP at a fixed rate by an open-loop generator "
            "(`bench/http/openloop.py`: request k is due at k / rate, on one of 64 keep-alive "
            "connections, and its latency runs from when it was due, so queueing in front of a "
            "slow server counts), accepted by Spillway's API "
            f"({args.api_processes} processes) and run by ONE "
            f"worker process (`--concurrency {WORKER_CONCURRENCY}`); the task is "
            "`bench/http/spillway_app.py`'s `resize` (validates its payload, returns a dict). "
            "**Accept-to-done** runs from the request's due time to the `finished_at` the "
            "worker's finish script stored (result written); Redis stores milliseconds, so "
            f"each figure is within 1 ms. Medians of {args.runs} runs, min-max in brackets. "
            "Each run starts on an emptied Redis (the earlier runs' task records deleted and "
            "the AOF rewritten), as the HTTP benchmark's runs do.",
            "",
            "| offered tasks/s | answered tasks/s | HTTP 202 p99 | accept-to-done p50 "
            "| accept-to-done p99 | max | inside Spillway p99 (record created to finished) "
            "| AOF rewrites, all runs (time rewriting) "
            "| accept-to-done p99 outside rewrites (share of tasks left out) "
            "| non-2xx + errors | tasks |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"Target: accept-to-done p99 <= 25 ms at 1,000 tasks/s: **{verdict}** ({p99:.1f} ms).",
            "",
            f"- Command: `{command}` (`make bench` runs it as `python -m bench.run latency`).",
            f"- The worker: `{' '.join(['python', *worker_command()[1:]])}`; the API: "
            "`spillway.api.serve` (uvicorn, HTTP/1.1 on httptools, uvloop), "
            f"{args.api_processes} processes.",
            "- The generator, the API, the worker and Redis share the machine's "
            f"{os.cpu_count()} CPUs with other work: load average (1 min) "
            f"{args.load[0]:.1f} when the runs started, {args.load[1]:.1f} when they ended.",
            "- Redis: the embedded throw-away server on loopback, AOF on (`appendfsync everysec`).",
            "- AOF rewrites: Redis forks a child that writes the whole dataset again each time "
            f"the AOF has grown by {AOF_REWRITE_PERCENTAGE} % since the last rewrite (the "
            "embedded server's threshold, docs/reliability.md#aof-rewrites; 64 MB at least), "
            "and every task's record is kept for `SPILLWAY_RESULT_TTL`, so at these rates a "
            "rewrite comes every several seconds and its child takes most of a CPU. When each "
            "ran was read "
            "from `INFO persistence` every 50 ms; *outside rewrites* leaves out the tasks due "
            f"while one ran or up to {REWRITE_SHADOW_S:g} s after it ended (analysis only: the "
            "targets are the columns before it).",
            f"- Measured: {machine(binary)}.",
        ]
    )
    return Report(TITLE, "\n".join(lines), markdown)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[1000.0, 5000.0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds offered per rate")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    parser.add_argument(
        "--redis-config",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a Redis setting for the trial (e.g. auto-aof-rewrite-percentage 400); "
        f"with any, {DOC.name} is left as it is: its figures are Redis's defaults",
    )
    parser.add_argument(
        "--api-processes",
        type=int,
        default=API_PROCESSES,
        help=f"the API's server processes; with other than {API_PROCESSES}, {DOC.name} is "
        "left as it is",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
