"""Run the benchmarks (all, or the ones named) and record each in docs/benchmarks.md.

python -m bench.run            # every benchmark
python -m bench.run drain      # only the worker drain
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench import DOC, Report, update_section

# Name -> module with a `run() -> Report`. Add new benchmarks here.
BENCHMARKS = {
    "drain": "bench.drain",
    "peers": "bench.peers.cli",  # the Python peers side by side; ~17 min (3 rounds)
    "http": "bench.http.run",  # the HTTP accept path beside the seed design; ~3 min
    "scaling": "bench.scaling",  # 1, 2, 3 shards on a local Redis Cluster; ~1 min
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
    for name in args.names or list(BENCHMARKS):
        print(f"--- {name}", flush=True)
        report: Report = importlib.import_module(BENCHMARKS[name]).run()
        print(report.summary, flush=True)
        if not args.no_write:
            update_section(report.title, report.markdown)
            print(f"updated the {report.title!r} section of {DOC}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
