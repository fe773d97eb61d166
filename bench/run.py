"""Run the benchmarks (all, or the ones named) and record each in docs/benchmarks.md.

python -m bench.run            # every benchmark
python -m bench.run drain      # only the worker drain
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from bench import DOC, Report, update_section
from bench.chart import write_chart

# Name -> module with a `run() -> Report`, or a module and the arguments its `parser()` is
# given. Add new benchmarks here.
BENCHMARKS = {
    "drain": "bench.drain",
    "peers": "bench.peers.cli",  # the Python peers side by side; ~17 min (3 rounds)
    "http": "bench.http.run",  # the HTTP accept path beside the seed design; ~14 min
    "latency": "bench.latency",  # accept-to-done at 1,000 and 5,000 tasks/s; ~2 min
    "cost": "bench.cost",  # Redis bytes per task, CPU seconds per 10,000 tasks; ~1 min
    "budget": "bench.budget",  # CPU us per task at 5,000/s: API, worker, Redis by script; ~1 min
    "budget-one": "bench.budget --api-processes 1",  # the same with one API process; ~1 min
    "budget-ab": "bench.budget_ab",  # the budget of the tree before the last cuts and this; ~10 min
    "floor": "bench.floor",  # the API's CPU per request against bare servers; ~2 min
    "stepped": "bench.stepped",  # a run's timeout armed first or only if it waits; ~10 s
    "encoding": "bench.encoding",  # task records compact vs Redis's default bound; ~5 min
    "linger": "bench.linger",  # CPU per task and latency at a 2 and a 5 ms accept linger; ~5 min
    "rewrite": "bench.rewrite",  # an AOF rewrite's CPU with and without RDB compression; ~5 min
    "overload": "bench.overload",  # 2x what a worker drains for 60 s: accept p99, backlog; ~3 min
    "flame": "bench.flame",  # py-spy flame graphs of the accept path and the worker loop
    "scaling": "bench.scaling",  # 1, 2, 3 shards on a local Redis Cluster; ~1 min
    "limits": "bench.limits",  # concurrency=50 against unlimited, priority latency; ~3 min
    "ab": "bench.ab",  # the commit before the refactor against this tree (issue 16); ~12 min
    "story": "bench.story",  # the seed's surge, sync design vs Spillway with PostgreSQL; ~4 min
    "tracing": "bench.tracing",  # OpenTelemetry off and on, CPU per task; ~1 min
    "feed": "bench.feed",  # queue events: nobody, 1 and 10 followers, CPU per task; ~1 min
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME",
        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)",
    )  # fmt: skip
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    names = args.names or list(BENCHMARKS)
    # A bar over the whole run (the benchmarks print their own steps above it).
    with Progress(
        TextColumn("[bold]make bench[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.description}"), TimeElapsedColumn(),
    ) as progress:  # fmt: skip
        overall = progress.add_task("", total=len(names))
        for name in names:
            progress.update(overall, description=name)
            progress.console.print(f"--- {name}")
            module_name, *arguments = BENCHMARKS[name].split()
            module = importlib.import_module(module_name)
            report: Report = (
                module.run(module.parser().parse_args(arguments)) if arguments else module.run()
            )
            progress.console.print(report.summary)
            if not args.no_write:
                update_section(report.title, report.markdown)
                progress.console.print(f"updated the {report.title!r} section of {DOC}")
            progress.advance(overall)
    if not args.no_write:
        chart = write_chart()  # from what the http, latency and cost benchmarks saved
        if chart is not None:
            print(f"redrew {chart}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
