"""Refactor A/B (issue 16): the commit before the refactor against this tree, in one run.

    python -m bench.ab [--before REV] [--title T] [--runs 5] [--duration 8] [--warmup 2]
                       [--tasks 20000] [--no-write]

Checks out `--before` (default 42489a0) into a throw-away worktree (`git worktree add
--detach`, removed at the end, also on failure) and runs both trees with this venv, each
process choosing its tree by ``PYTHONPATH=<tree>/src:<tree>`` and working in the tree (so the
served applications, `bench/http/spillway_app.py` and `bench/drain.py`, are the tree's own).
The harness is this tree's. Each round measures, in turn and on a fresh throw-away Redis (AOF
on, fsync every second):

- HTTP accept: `POST /tasks` under wrk (`bench.http.run`'s script, payload, 64 connections,
  a warm-up then `--duration` seconds) against `spillway.api.serve` with 2 processes, for the
  before tree, this tree, this tree with ``SPILLWAY_FAST_PATH=0`` (the stock path) and the seed
  design (`bench/http/seed_app.py`, 1 and 2 processes);
- enqueue: `--tasks` no-op tasks with `enqueue_many` (batches of 1,000), then `--tasks`
  awaited `enqueue` calls, from one producer process (`bench/ab_tree.py`);
- drain: ONE burst worker process draining the `enqueue_many` tasks, as `bench.drain` does.

The order of the trees flips every round, so a drift in the machine's load favours neither.
Ratios are taken within each round before their median. Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import DOC, ROOT, Report, machine, standalone
from bench.drain import PREFIX as DRAIN_PREFIX
from bench.drain import worker_command
from bench.http.run import (
    PAYLOAD,
    SEED,
    SPILLWAY,
    Figures,
    Server,
    Target,
    measure,
    seed_server,
    spillway_server,
    started,
)
from spillway.embedded import EmbeddedRedis

__all__ = ["TITLE", "Tree", "main", "run"]

TITLE = "Refactor A/B (issue 16)"
BEFORE = "42489a0"
CONNECTIONS = 64
WORKERS = 2
BOUND = 0.95  # criterion 1: the new tree within 5 % of the old one
STOCK_BOUND = 5.0  # criterion 2: the stock path >= 5x the seed design
TIMEOUT = 300.0
HELPER = Path(__file__).with_name("ab_tree.py")
# `serve` as bench.http.run starts it, saying first which spillway it imported (checked).
_SERVE = (
    "import sys, spillway; print('spillway', spillway.__file__, flush=True); "
    "from spillway.api import serve; "
    "serve(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]), workers=int(sys.argv[3]))"
)
_STOCK_WARNING = "own httptools protocol"  # what serve logs when it falls back to stock
# What the fenced fast paths log when they fall back to a public API (the probe failed, or a
# take-over failed at run time): reported per tree, since a fallback changes what is measured.
_FALLBACK = re.compile(
    r"(?:redis-py|prometheus-client) \S+: .*|Serving with uvicorn .*"
    r"|.*changed after prometheus_client.*"
)

BEFORE_SIDE, AFTER_SIDE, STOCK, SEED_1, SEED_W = "before", "after", "stock", "seed-1", "seed-2"
HTTP, DRAIN, DRAIN_WALL, ENQUEUE_MANY, ENQUEUE = (
    "http", "drain", "drain-wall", "enqueue-many", "enqueue",
)  # fmt: skip


@dataclass(frozen=True)
class Tree:
    """One checkout: its root, and the commit it was measured at."""

    side: str
    root: Path
    commit: str

    @property
    def pythonpath(self) -> str:
        return os.pathsep.join([str(self.root / "src"), str(self.root)])

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of this tree's processes: no SPILLWAY_* but those given."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
        return env | {"PYTHONPATH": self.pythonpath} | extra

    def helper(self, results: Results, *args: str) -> dict[str, Any]:
        """Run `bench/ab_tree.py` in this tree; its JSON line."""
        done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-P", str(HELPER), *args],
            env=self.env(SPILLWAY_FAST_PATH="1"),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{self.side}: ab_tree.py {args[0]} failed:\n{done.stderr}")
        results.note(self.side, f"producer ({args[0]})", done.stderr)
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


@dataclass
class Results:
    """Per measurement and side, one figure per round (higher is better)."""

    figures: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    http: dict[str, list[Figures]] = field(default_factory=dict)
    fallbacks: dict[str, set[str]] = field(default_factory=dict)

    def add(self, measurement: str, side: str, value: float) -> None:
        self.figures.setdefault(measurement, {}).setdefault(side, []).append(value)

    def note(self, side: str, process: str, log: str) -> None:
        """Keep the fallbacks a process of `side` logged."""
        for line in _FALLBACK.findall(log):
            self.fallbacks.setdefault(side, set()).add(f"{process}: {line.strip()}")

    def ratios(self, measurement: str, side: str, base: str) -> list[float]:
        by_side = self.figures[measurement]
        return [a / b for a, b in zip(by_side[side], by_side[base], strict=True)]


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Tree]:
    """A detached worktree of `rev`, removed afterwards."""
    holder = Path(tempfile.mkdtemp(prefix="spillway-ab-"))
    root = holder / "before"
    _git("worktree", "add", "--detach", str(root), rev)
    try:
        yield Tree(BEFORE_SIDE, root, _git("-C", str(root), "log", "-1", "--format=%h %s"))
    finally:
        _git("worktree", "remove", "--force", str(root))
        shutil.rmtree(holder, ignore_errors=True)


def _git(*args: str) -> str:
    git = shutil.which("git") or "git"
    done = subprocess.run(  # noqa: S603 - git with our own arguments
        [git, *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def check_trees(trees: list[Tree], results: Results) -> None:
    """Each tree's processes import that tree's spillway (printed once per tree)."""
    for tree in trees:
        where = tree.helper(results, "where")
        print(f"{tree.side} ({tree.commit}): {where}", flush=True)
        for module, path in where.items():
            if not Path(path).is_relative_to(tree.root):
                raise RuntimeError(f"{tree.side}: {module} came from {path}, not {tree.root}")


def tree_server(tree: Tree, redis_url: str, fast: bool = True) -> Server:
    server = spillway_server(redis_url, WORKERS)
    server.name = f"{tree.side}{'' if fast else '-stock'}"
    server.command = [
        sys.executable, "-c", _SERVE, "bench.http.spillway_app:app", "{port}", str(WORKERS),
    ]  # fmt: skip
    server.env |= {"PYTHONPATH": tree.pythonpath, "SPILLWAY_FAST_PATH": "1" if fast else "0"}
    server.cwd = tree.root
    return server


def _check_log(server: Server, tree: Tree, log_dir: Path, results: Results) -> None:
    log = (log_dir / f"{server.name}.log").read_text()
    stock = server.env["SPILLWAY_FAST_PATH"] == "0"
    first = log.splitlines()[0] if log else ""
    if not first.startswith("spillway ") or not Path(first[9:]).is_relative_to(tree.root):
        raise RuntimeError(f"{server.name} did not import {tree.root}'s spillway: {first!r}")
    if (_STOCK_WARNING in log) != stock:
        wanted = "the stock protocol" if stock else "the fast protocol"
        raise RuntimeError(f"{server.name} is not serving with {wanted}; see its log")
    if not stock:
        results.note(tree.side, "API server", log)


def http_round(
    i: int, before: Tree, after: Tree, args: argparse.Namespace, log_dir: Path, results: Results
) -> str:
    """One round of the HTTP accept measurement; the Redis binary."""
    task_body = json.dumps({"type": "resize", "payload": PAYLOAD}).encode()
    seed_body = json.dumps(PAYLOAD).encode()
    round_dir = log_dir / f"http-{i + 1}"
    round_dir.mkdir()
    with EmbeddedRedis(appendonly=True) as redis:
        servers = {
            BEFORE_SIDE: tree_server(before, redis.url),
            AFTER_SIDE: tree_server(after, redis.url),
            STOCK: tree_server(after, redis.url, fast=False),
            SEED_1: seed_server(redis.url, 1),
            SEED_W: seed_server(redis.url, WORKERS),
        }
        targets = [
            Target(side, server, *(("/process", seed_body, SEED) if side.startswith("seed")
                                   else ("/tasks", task_body, SPILLWAY)))
            for side, server in servers.items()
        ]  # fmt: skip
        with started(list(servers.values()), round_dir):
            for target in targets:
                if target.kind == SPILLWAY:
                    tree = before if target.label == BEFORE_SIDE else after
                    _check_log(target.server, tree, round_dir, results)
            for target in targets if i % 2 == 0 else reversed(targets):
                figures = measure(target, redis, args, CONNECTIONS)
                results.add(HTTP, target.label, figures.rps)
                results.http.setdefault(target.label, []).append(figures)
                print(
                    f"round {i + 1}/{args.runs}, HTTP {target.label}: {figures.rps:,.0f} req/s, "
                    f"p99 {figures.p99_ms:.1f} ms, non-2xx {figures.non2xx}, "
                    f"202 not in Redis {figures.lost}",
                    flush=True,
                )
            for target in targets:  # a take-over fails at the first write, after start-up
                if target.label != STOCK and target.kind == SPILLWAY:
                    log = (round_dir / f"{target.server.name}.log").read_text()
                    results.note(target.label, "API server", log)
        return redis.binary or "redis-server"


def work_round(
    i: int, trees: list[Tree], args: argparse.Namespace, log_dir: Path, results: Results
) -> None:
    """One round of the enqueue and drain measurements, each tree on a fresh Redis."""
    for tree in trees if i % 2 == 0 else reversed(trees):
        with EmbeddedRedis(appendonly=True) as redis, tempfile.TemporaryDirectory() as tmp:
            ids = str(Path(tmp) / "ids")
            enqueued = tree.helper(results, "enqueue", redis.url, str(args.tasks), ids)
            log = log_dir / f"worker-{i + 1}-{tree.side}.log"
            wall_s = drain(tree, redis.url, log)
            results.note(tree.side, "worker", log.read_text())
            span_s = tree.helper(results, "verify", redis.url, ids)["span_s"]
        figures = {
            ENQUEUE_MANY: args.tasks / enqueued["enqueue_many_s"],
            ENQUEUE: args.tasks / enqueued["enqueue_s"],
            DRAIN: args.tasks / span_s,
            DRAIN_WALL: args.tasks / wall_s,
        }
        for measurement, value in figures.items():
            results.add(measurement, tree.side, value)
        shown = ", ".join(f"{k} {v:,.0f} tasks/s" for k, v in figures.items())
        print(f"round {i + 1}/{args.runs}, {tree.side}: {shown}", flush=True)


def drain(tree: Tree, redis_url: str, log: Path) -> float:
    """Wall seconds of one burst worker process draining the queue."""
    env = tree.env(
        SPILLWAY_REDIS_URL=redis_url, SPILLWAY_PREFIX=DRAIN_PREFIX, SPILLWAY_FAST_PATH="1"
    )
    with log.open("wb") as out:
        started_at = time.perf_counter()
        worker = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            worker_command(), env=env, cwd=tree.root, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        code = worker.wait(TIMEOUT)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    if code != 0:
        raise RuntimeError(f"{tree.side}: the worker exited with code {code}; see {log}")
    return time.perf_counter() - started_at


def run(args: argparse.Namespace | None = None) -> Report:
    """Measure both trees (default options unless given); the section for docs/benchmarks.md."""
    args = args or parser().parse_args([])
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    load_start = os.getloadavg()
    started_at = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-ab-"))
    print(f"server logs: {log_dir}", flush=True)
    after = Tree(AFTER_SIDE, ROOT, _git("describe", "--always", "--dirty", "--abbrev=7"))
    results = Results()
    redis_binary = "redis-server"
    with checkout(args.before) as before:
        check_trees([before, after], results)
        for i in range(args.runs):
            redis_binary = http_round(i, before, after, args, log_dir, results)
            work_round(i, [before, after], args, log_dir, results)
    load_end = os.getloadavg()
    minutes = (time.monotonic() - started_at) / 60
    return _report(results, args, before, after, (load_start, load_end, minutes), redis_binary)


def _spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"


def _each(values: list[float]) -> str:
    return f"**{statistics.median(values):,.0f}** ({' / '.join(f'{v:,.0f}' for v in values)})"


def _report(
    results: Results,
    args: argparse.Namespace,
    before: Tree,
    after: Tree,
    clock: tuple[tuple[float, float, float], tuple[float, float, float], float],
    redis_binary: str,
) -> Report:
    load_start, load_end, minutes = clock
    rows = [
        (HTTP, f"HTTP `POST /tasks`, {WORKERS} processes, {CONNECTIONS} connections (req/s)"),
        (DRAIN, "drain, one worker process (tasks/s, first start to last finish)"),
        (ENQUEUE_MANY, "`enqueue_many`, 1,000 per call, one process (tasks/s)"),
        (ENQUEUE, "awaited `enqueue`, one at a time, one process (tasks/s)"),
        (DRAIN_WALL, "drain, burst process wall time, start-up included (tasks/s)"),
    ]
    table = [
        "| measurement | before | after | after / before: median (min-max) "
        f"| rounds below {BOUND:g} | within 5 % |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    summary = [f"{args.title}: before {before.commit}; after {after.commit}"]
    for measurement, label in rows:
        by_side = results.figures[measurement]
        ratios = results.ratios(measurement, AFTER_SIDE, BEFORE_SIDE)
        median = statistics.median(ratios)
        verdict = "**met**" if median >= BOUND else "**missed**"
        if measurement == DRAIN_WALL:
            verdict = "(not a criterion)"
        below = sum(r < BOUND for r in ratios)
        table.append(
            f"| {label} | {_each(by_side[BEFORE_SIDE])} | {_each(by_side[AFTER_SIDE])} "
            f"| **{_spread(ratios)}** | {below} of {len(ratios)} | {verdict} |"
        )
        summary.append(f"{measurement}: after/before {_spread(ratios)} {verdict}")
    http = results.figures[HTTP]
    stock_1 = results.ratios(HTTP, STOCK, SEED_1)
    stock_w = results.ratios(HTTP, STOCK, SEED_W)
    stock_verdict = "**met**" if statistics.median(stock_1) >= STOCK_BOUND else "**missed**"
    stock = [
        "| `POST /tasks`, stock path | seed design | stock / seed: median (min-max) | >= 5x |",
        "| ---: | ---: | ---: | --- |",
        f"| {_each(http[STOCK])} | 1 process (as the seed runs it): {_each(http[SEED_1])} "
        f"| **{_spread(stock_1)}x** | {stock_verdict} |",
        f"| | {WORKERS} processes: {_each(http[SEED_W])} | {_spread(stock_w)}x | |",
    ]
    summary.append(f"stock/seed (1 process): {_spread(stock_1)}x {stock_verdict}")
    summary.append(f"stock/seed ({WORKERS} processes): {_spread(stock_w)}x")
    fallbacks = [
        f"  - {side}: " + ("; ".join(sorted(results.fallbacks.get(side, ()))) or "none")
        for side in (BEFORE_SIDE, AFTER_SIDE)
    ]
    summary += [line.strip() for line in fallbacks]
    sanity = [
        f"{side} {sum(f.non2xx + f.socket_errors for f in runs)} non-2xx, "
        f"{sum(f.lost for f in runs)} of {sum(f.ok for f in runs):,} 202s not in Redis"
        for side, runs in results.http.items()
    ]
    stock_vs_fast = _spread(results.ratios(HTTP, STOCK, AFTER_SIDE))
    command = (
        f"python -m bench.ab --before {args.before} --runs {args.runs} "
        f"--duration {args.duration:g} --warmup {args.warmup:g} --tasks {args.tasks}"
    )
    load = "{:.2f} / {:.2f} / {:.2f}"
    markdown = f"""\
The commit before the refactor (**before**: `{before.commit}`) against this tree (**after**:
`{after.commit}`), run from one venv in one run: each process picks its tree with
`PYTHONPATH=<tree>/src:<tree>` (checked: each tree's processes print the `spillway` they
imported). Each of {args.runs} rounds measures both trees in turn, each on a fresh throw-away
Redis (AOF on, `appendfsync everysec`), the order flipping every round; ratios are taken
within each round, then their median, so they hold when the machine is busy (the absolute
figures do not). Criterion 1: with the fast path on, after / before >= {BOUND:g} for the HTTP
accept, the drain and the enqueue figures.

| measurement | figure |
| --- | --- |
| HTTP | wrk, 1 thread, {CONNECTIONS} connections, {args.warmup:g} s warm-up then \
{args.duration:g} s, `bench/http/post.lua`, against `spillway.api.serve` ({WORKERS} processes) \
serving each tree's `bench/http/spillway_app.py` |
| enqueue | {args.tasks:,} no-op tasks with `enqueue_many`, then {args.tasks:,} awaited \
`enqueue` calls, from one producer process (`bench/ab_tree.py`) |
| drain | one `spillway worker bench.drain:app --burst` process draining the \
{args.tasks:,} `enqueue_many` tasks; every task checked `succeeded` and the stream empty |

{chr(10).join(table)}

Criterion 2: with `SPILLWAY_FAST_PATH=0` (the stock path: uvicorn's own httptools protocol,
redis-py's public pipelines), `POST /tasks` against the seed design (`bench/http/seed_app.py`),
measured in the same rounds. The stock path answered {stock_vs_fast} of the fast path's
requests/s (median (min-max) of the rounds).

{chr(10).join(stock)}

- Command: `{command}` (needs `wrk`), in {minutes:.1f} min.
- HTTP answers: {"; ".join(sanity)}.
- Fallbacks to a public API that the fast-path processes (API servers, workers, producers)
  logged, per tree:
{chr(10).join(fallbacks)}
- The machine is shared ({os.cpu_count()} CPUs for wrk, the servers, Redis and other work):
  load average (1 / 5 / 15 min) {load.format(*load_start)} at the start,
  {load.format(*load_end)} at the end.
- Measured: {machine(redis_binary)}.
"""
    return Report(args.title, "\n".join(summary), markdown)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--before", default=BEFORE, help="the commit before the change")
    parser.add_argument(
        "--title", default=TITLE, help=f"the section of {DOC.name} to write (default: {TITLE})"
    )
    parser.add_argument("--runs", type=int, default=5, help="rounds, each tree once per round")
    parser.add_argument("--duration", type=float, default=8, help="HTTP seconds measured")
    parser.add_argument("--warmup", type=float, default=2, help="HTTP seconds of warm-up")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks enqueued and drained")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
