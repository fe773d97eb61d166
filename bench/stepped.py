"""What a run's timeout costs when the handler never waits: armed first, or only if it waits.

    python -m bench.stepped [--runs 200000] [--rounds 5] [--no-write]

Under uvloop, in one task, a no-op async handler is called `--runs` times each way, in turn
for `--rounds` rounds: under `spillway.loops.RunTimeout` armed before the call (what a worker's
run did before), and as `spillway.execution` calls it now (its first step at once, a timer only
if it waits). Reports microseconds per call of each, the medians of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import uvloop

from bench import Report, machine, standalone
from spillway.execution import _bounded
from spillway.loops import RunTimeout

__all__ = ["TITLE", "run"]

TITLE = "A run's timeout when the handler never waits"


async def _handler(n: int) -> dict[str, int]:
    return {"pixels": n * 2}


async def _measure(runs: int, rounds: int) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    if current is None:
        raise RuntimeError("runs in a task")

    async def armed_first() -> object:
        async with RunTimeout(loop, current, 300.0):
            return await _handler(3)

    async def stepped() -> object:
        return await _bounded(_handler(3), loop, current, 300.0)

    ways: dict[str, Callable[[], Awaitable[object]]] = {
        "timer armed first (before)": armed_first,
        "first step, then a timer only if it waits (now)": stepped,
    }
    out: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            started = time.perf_counter()
            for _ in range(runs):
                await way()
            await asyncio.sleep(0)  # the loop's turn: cancelled timers are let go here
            out[name].append((time.perf_counter() - started) / runs * 1e6)
    return out


def run(args: argparse.Namespace | None = None) -> Report:
    args = args or parser().parse_args([])
    per_call = uvloop.run(_measure(args.runs, args.rounds))
    rows = [
        f"| {name} | **{statistics.median(v):.2f}** ({' / '.join(f'{x:.2f}' for x in v)}) |"
        for name, v in per_call.items()
    ]
    before, now = (statistics.median(v) for v in per_call.values())
    command = f"python -m bench.stepped --runs {args.runs} --rounds {args.rounds}"
    markdown = "\n".join(
        [
            "A no-op async handler called in one task under uvloop, each way in turn: under a "
            "timeout armed before the call (`RunTimeout`: its enter and exit, a `call_at` and "
            "its cancel), and as a worker's run calls it now (`spillway.execution`: the first "
            "step at once, a timer only if the handler waits). Microseconds per call, median "
            f"of {args.rounds} rounds of {args.runs:,} calls (the rounds in brackets).",
            "",
            "| how the handler is called | us per call |",
            "| --- | ---: |",
            *rows,
            "",
            f"- What a run that never waits saves: {before - now:.2f} us.",
            f"- Command: `{command}` (`make bench` runs it as `python -m bench.run stepped`).",
            f"- Measured: {machine()}.",
        ]
    )
    return Report(TITLE, f"timer armed first {before:.2f} us, stepped {now:.2f} us", markdown)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stepped",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=200_000, help="calls per way and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the two ways in turn")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
