"""``python -m bench.peers [--quick] [--only NAME ...] [--no-docs]``, and ``make bench``'s entry.

Runs the suite, prints the table, checks nothing it started is left running, and writes its
section of docs/benchmarks.md and the chart docs/benchmarks-peers.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from bench import Report
from bench.peers.peers import PEERS, Peer
from bench.peers.process import leftover_processes
from bench.peers.report import (
    TITLE,
    Context,
    print_tables,
    render_markdown,
    targets_text,
    update_docs,
    wrap_section,
    write_chart,
)
from bench.peers.suite import Plan, Results, run_suite

__all__ = ["main", "run"]

DOCS = Path("docs/benchmarks.md")
CHART = Path("docs/benchmarks-peers.png")
QUICK = Plan(rounds=1, drain_tasks=5_000, enqueue_tasks=1_000, drain_timeout=120.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 round, 5,000-task drain")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[p.key for p in PEERS])
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args(argv)
    peers = tuple(p for p in PEERS if not args.only or p.key in args.only or p.key == "spillway")
    command = "python -m bench.peers" + (" --quick" if args.quick else "")
    if args.only:
        command += " --only " + " ".join(args.only)
    results, ctx, leftovers = _measure(command, QUICK if args.quick else Plan(), peers)
    if not args.no_docs:
        update_docs(DOCS, wrap_section(render_markdown(results, peers, ctx)))
        write_chart(results, peers, CHART)
        Console().print(f"wrote {DOCS} (section {TITLE!r}) and {CHART}")
    return 1 if leftovers else 0


def run() -> Report:
    """`make bench` (bench.run): the full suite, returned as the section bench.run writes."""
    results, ctx, leftovers = _measure("make bench", Plan(), PEERS)
    write_chart(results, PEERS, CHART)
    summary = targets_text(results, PEERS)
    if leftovers:
        summary += f"\nprocesses left running: {leftovers}"
    return Report(TITLE, summary, render_markdown(results, PEERS, ctx))


def _measure(
    command: str, plan: Plan, peers: tuple[Peer, ...]
) -> tuple[Results, Context, list[int]]:
    console = Console()
    ctx = Context.here(command, plan, peers)
    console.print(f"[bold]{command}[/] on {ctx.machine}")
    results = run_suite(peers, plan, console)
    print_tables(results, peers, console)
    leftovers = leftover_processes()
    if leftovers:
        console.print(f"[red]processes left running: {leftovers}[/]")
    return results, ctx, leftovers
