"""``python -m bench.peers [--quick] [--only NAME ...] [--no-docs]``: run, print, write docs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from bench.peers.peers import PEERS
from bench.peers.process import leftover_processes
from bench.peers.report import Context, print_tables, render_markdown, update_docs, write_chart
from bench.peers.suite import Plan, run_suite

DOCS = Path("docs/benchmarks.md")
CHART = Path("docs/benchmarks-peers.png")
QUICK = Plan(rounds=1, drain_tasks=5_000, enqueue_tasks=1_000, drain_timeout=120.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 round, 5,000-task drain")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[p.key for p in PEERS])
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    peers = tuple(p for p in PEERS if not args.only or p.key in args.only or p.key == "spillway")
    console = Console()
    command = "python -m bench.peers" + (" --quick" if args.quick else "")
    if args.only:
        command += " --only " + " ".join(args.only)
    ctx = Context.here(command, plan, peers)
    console.print(f"[bold]{command}[/] on {ctx.machine}")
    results = run_suite(peers, plan, console)
    print_tables(results, peers, console)
    leftovers = leftover_processes()
    if leftovers:
        console.print(f"[red]processes left running: {leftovers}[/]")
    if not args.no_docs:
        update_docs(DOCS, render_markdown(results, peers, ctx))
        write_chart(results, peers, CHART)
        console.print(f"wrote {DOCS} (section 'Peers') and {CHART}")
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
