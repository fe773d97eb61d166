"""CPU budget per task of the whole pipeline (issue 21): API, worker, Redis, load generator.

    python -m bench.budget [--rate 5000] [--seconds 10] [--api-processes 2] [--no-write]

The stack of `bench.latency` (Redis with AOF on, the API with 2 processes or
`--api-processes`, ONE worker process) takes `--rate` tasks/s through HTTP for `--seconds`
(after a 2 s warm-up at 1,000/s); the CPU seconds of each process tree from the first
request until every task was done, divided by the tasks, are the budget. Redis's share is
split into the time inside each command clients sent (a script call under its script's name),
measured in a second, short window of the same load with the slow log recording every command
(``slowlog-log-slower-than 0``), so the recording's own cost stays out of the CPU figures; and
the rest (protocol, networking, AOF). Each API process's share is listed with the connections
of the generator it held halfway through (the processes share one listening socket, and
whichever wakes first takes a burst of new connections). Every process started is stopped by
its PID.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import threading
from pathlib import Path
from typing import Any

import psutil
import redis

from bench import Report, machine, standalone
from bench.latency import API_PROCESSES, Stack, measure_rate, stack, tree_cpu
from spillway.broker.scripts import Scripts

__all__ = ["TITLE", "run"]

TITLE = "CPU budget per task"
GOAL_US = 150  # issue 21: API + worker + Redis at 5,000 tasks/s
SLOWLOG_SECONDS = 3.0


def _script_names() -> dict[str, str]:
    """sha -> script name, with and without the flags line (which one runs depends on Redis)."""
    scripts = Scripts()
    names: dict[str, str] = {}
    for flags in (False, True):
        scripts.use_flags(flags)
        names |= {sha: name for name, sha in scripts.sha.items()}
    return names


def _by_command(
    entries: list[dict[str, Any]], tasks: int
) -> tuple[dict[str, float], dict[str, float], float]:
    """Microseconds per task inside the commands of these slow-log entries: Spillway's own by
    command (a script call under its script's name, ``accept.lua``, with the commands it
    calls); the commands scripts called, by command (already in their script's time); and
    what other clients sent (the benchmark's own reads of the records)."""
    names = _script_names()
    own: collections.Counter[str] = collections.Counter()
    inner: collections.Counter[str] = collections.Counter()
    other = 0
    for entry in entries:
        command = entry["command"]
        parts = command.split() if isinstance(command, bytes | str) else list(command)
        if not parts:
            continue
        head = [p.decode("ascii", "replace") if isinstance(p, bytes) else str(p) for p in parts[:2]]
        name = head[0].upper()
        if name == "EVALSHA" and len(head) > 1:
            name = f"{names.get(head[1], 'another script')}.lua"
        duration = int(entry["duration"])
        if entry.get("client_address") == b"?:0":  # called by a script
            inner[name] += duration
        elif bytes(entry.get("client_name") or b"").startswith(b"spillway"):
            own[name] += duration
        else:
            other += duration
    return (
        {name: n / tasks for name, n in own.most_common()},
        {name: n / tasks for name, n in inner.most_common()},
        other / tasks,
    )


def run(args: argparse.Namespace | None = None) -> Report:
    args = args or parser().parse_args([])
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-budget-"))
    with stack(log_dir, api_processes=args.api_processes) as s:
        client = redis.Redis.from_url(s.redis.url)
        try:
            measure_rate(s, 1000, 2)  # warm-up
            servers = _api_processes(s)
            cpu = {p.pid: tree_cpu(p.pid) for p in servers}
            held: dict[int, int] = {}
            halfway = threading.Timer(args.seconds / 2, _count_connections, (s, servers, held))
            halfway.start()
            r = measure_rate(s, args.rate, args.seconds)
            halfway.join()
            split = [(held.get(p.pid, 0), (tree_cpu(p.pid) - cpu[p.pid]) / r.answered * 1e6)
                     for p in servers]  # fmt: skip
            client.config_set("slowlog-max-len", 1_000_000)
            client.config_set("slowlog-log-slower-than", 0)
            client.slowlog_reset()
            logged = measure_rate(s, args.rate, SLOWLOG_SECONDS)
            client.config_set("slowlog-log-slower-than", 10_000)
            own, inner, other = _by_command(client.slowlog_get(1_000_000), logged.answered)
            client.slowlog_reset()
        finally:
            client.close()
        binary = s.redis.binary
    if r.bad:
        raise RuntimeError(f"{r.bad} requests failed at {args.rate:g}/s")
    per_task = {k: v / r.answered * 1e6 for k, v in r.cpu.items()}
    generator = r.generator_cpu / r.answered * 1e6
    # What the AOF grew by per task, from a window no rewrite fell in (a rewrite resets it).
    window = next((w for w in (r, logged) if w.aof_bytes is not None), None)
    aof = (window.aof_bytes or 0) / window.answered if window is not None else None
    return _report(
        args,
        r.answered,
        per_task,
        generator,
        (own, inner, other),
        binary,
        (len(r.rewrites), aof),
        split,
    )


def _api_processes(s: Stack) -> list[psutil.Process]:
    """The API's server processes: the one process, or the children its supervisor started
    (not multiprocessing's resource tracker)."""
    if s.api.process is None:
        raise RuntimeError("the API is not running")
    root = psutil.Process(s.api.process.pid)
    children = [p for p in root.children() if "resource_tracker" not in " ".join(p.cmdline())]
    return children or [root]


def _count_connections(s: Stack, servers: list[psutil.Process], held: dict[int, int]) -> None:
    for p in servers:
        held[p.pid] = sum(
            1
            for c in p.net_connections(kind="tcp")
            if c.laddr and c.laddr.port == s.api.port and c.status == psutil.CONN_ESTABLISHED
        )


def _report(
    args: argparse.Namespace,
    tasks: int,
    per_task: dict[str, float],
    generator: float,
    commands: tuple[dict[str, float], dict[str, float], float],
    binary: str | None,
    aof: tuple[int, float | None],
    split: list[tuple[int, float]],
) -> Report:
    by_command, inner, other = commands
    rewrites, aof_per_task = aof
    aof_bytes = "n/a (a rewrite in each window)" if aof_per_task is None else f"{aof_per_task:,.0f}"
    total = per_task["api"] + per_task["worker"] + per_task["redis"]
    in_commands = sum(by_command.values()) + other
    scripts = sum(usec for name, usec in by_command.items() if name.endswith(".lua"))
    called = ", ".join(f"`{name}` {usec:.1f}" for name, usec in inner.items() if usec >= 0.1)
    processes = f"{args.api_processes} process" + ("es" if args.api_processes > 1 else "")
    rows = [
        f"| API (`spillway.api.serve`, {processes}) | **{per_task['api']:.0f}** "
        f"| {per_task['api'] / total:.0%} |",
        *(
            f"| - a process holding {held} of the generator's 64 connections | {usec:.1f} | |"
            for held, usec in (split if len(split) > 1 else [])
        ),
        f"| worker (one process, concurrency 100) | **{per_task['worker']:.0f}** "
        f"| {per_task['worker'] / total:.0%} |",
        f"| Redis (AOF on, `appendfsync everysec`) | **{per_task['redis']:.0f}** "
        f"| {per_task['redis'] / total:.0%} |",
        f"| - inside the commands clients sent (slow-log window) | {in_commands:.1f} | |",
        f"| - - scripts, with the commands they call | {scripts:.1f} | |",
        f"| - - - (of which the commands they call: {called}) | | |",
        *(
            f"| - - - `{name}` | {usec:.1f} | |"
            for name, usec in by_command.items()
            if name.endswith(".lua") and usec >= 0.05
        ),
        *(
            f"| - - `{name}` | {usec:.1f} | |"
            for name, usec in by_command.items()
            if not name.endswith(".lua") and usec >= 0.05
        ),
        f"| - - the benchmark's own reads of the records (not Spillway's) | {other:.1f} | |",
        f"| - AOF rewrites (the children Redis forked: {rewrites} in the window) "
        f"| {per_task['aof_rewrites']:.1f} | |",
        f"| - outside commands (protocol, networking, AOF writes, cron) "
        f"| {per_task['redis'] - per_task['aof_rewrites'] - in_commands:.1f} | |",
        f"| **API + worker + Redis** | **{total:.0f}** | 100% |",
        f"| load generator (`bench.http.openloop`, not in the total) | {generator:.0f} | |",
    ]
    command = f"python -m bench.budget --rate {args.rate:g} --seconds {args.seconds:g}"
    registered = "budget"
    if args.api_processes != API_PROCESSES:
        command += f" --api-processes {args.api_processes}"
        registered = "budget-one" if args.api_processes == 1 else ""
    markdown = "\n".join(
        [
            f"What one task costs in CPU time across the whole pipeline at {args.rate:,.0f} "
            f"tasks/s through HTTP ({tasks:,} tasks): issue 21 asks for at most "
            f"{GOAL_US} us (API + worker + Redis).",
            "",
            "| part | CPU us per task | share |",
            "| --- | ---: | ---: |",
            *rows,
            "",
            "- CPU: user + system seconds of each process tree, from the first request until "
            "every task was done (idle work such as heartbeats and blocking reads counts), "
            "divided by the tasks answered `202`. Redis's includes the AOF rewrites it forked "
            "(budgets before commit a95a471 left them out).",
            "- Inside Redis: a second window of "
            f"{SLOWLOG_SECONDS:g} s at the same rate with every command clients sent in the "
            "slow log (`slowlog-log-slower-than 0`): the time per task inside each command "
            "Spillway's clients sent, a script call under its script with the commands it "
            "calls (listed, not added again: `INFO commandstats` would count them twice). "
            "Outside commands is the first window's Redis CPU less those, so it is "
            "approximate; the slow log's own cost stays out of the CPU rows.",
            f"- The AOF grew by {aof_bytes} bytes per task (over a window with no rewrite "
            "in it); each rewrite writes the whole dataset again, so its CPU grows with these "
            "bytes.",
            f"- The stack is `bench.latency`'s (Redis, the API with {processes}, one worker, "
            "the generator: all on this 2-CPU machine).",
            f"- Command: `{command}`"
            + (
                f" (`make bench` runs it as `python -m bench.run {registered}`)."
                if registered
                else "."
            ),
            f"- Measured: {machine(binary)}; the machine is shared, so CPU seconds include some "
            "cache and scheduling overhead from other work.",
        ]
    )
    summary = (
        f"{args.rate:,.0f}/s: API {per_task['api']:.0f} us, worker {per_task['worker']:.0f} "
        f"us, Redis {per_task['redis']:.0f} us per task (total {total:.0f}, goal {GOAL_US}); "
        f"generator {generator:.0f} us; AOF {aof_bytes} bytes per task, {rewrites} rewrites"
    )
    if len(split) > 1:
        summary += "; API processes (connections: us) " + ", ".join(
            f"{held}: {usec:.0f}" for held, usec in split
        )
    title = TITLE if args.api_processes == API_PROCESSES else f"{TITLE}, {processes} of the API"
    return Report(title, summary, markdown)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.budget",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=5000.0, help="tasks/s offered")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds offered")
    parser.add_argument(
        "--api-processes", type=int, default=API_PROCESSES, help="the API's server processes"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
