"""CPU per task of two trees on the same stack, taken in turn (issue 21's budget as an A/B).

    python -m bench.budget_ab [--before REV] [--rates 5000 10000] [--seconds 8] [--rounds 6]
                              [--no-write]

The budget's first window (`bench.budget`) for the tree at REV (a temporary worktree) and for
this one, in alternating order round by round, each on a fresh stack (`bench.latency.stack`):
each tree's `spillway` runs the API processes and the worker, on this tree's benchmark code,
so only Spillway differs. A CPU second on this shared machine is not the same from one hour to
the next; the generator (this process), which neither tree changes, shows by how much. Medians
per tree and part, and each part's after/before ratio of the medians. Every process started
is stopped by its PID.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import redis

from bench import ROOT, Report, machine, standalone
from bench.ab import checkout
from bench.latency import offer_tasks, stack, wait_finished

__all__ = ["TITLE", "run"]

TITLE = "CPU budget A/B"
# The tree before one script per read (take.lua) and publishing only when someone listens.
BEFORE = "30463a0"
PARTS = ("api", "worker", "redis", "total", "generator")


def measure(pythonpath: str, rate: float, seconds: float, log_dir: Path) -> dict[str, float]:
    """CPU us per task of each part at `rate`, on a fresh stack running `pythonpath`'s
    Spillway (after a 1 s warm-up at 1,000/s and an emptied Redis, as `bench.latency`)."""
    with stack(log_dir, pythonpath=pythonpath) as s:
        client = redis.Redis.from_url(s.redis.url)
        try:
            offer_tasks(s.api.port, 1000, 1)
            s.empty()
            before = s.cpu_seconds()
            generator = time.process_time()
            answers, errors = offer_tasks(s.api.port, rate, seconds)
            generator = time.process_time() - generator
            ids = [a.task_id for a in answers if a.task_id]
            bad = errors + sum(1 for a in answers if not 200 <= a.status < 300)
            if bad or not ids:
                raise RuntimeError(f"{bad} bad answers of {len(answers)} at {rate:g}/s")
            wait_finished(client, ids, 120)
            after = s.cpu_seconds()
        finally:
            client.close()
    n = len(ids)
    out = {part: (after[part] - before[part]) / n * 1e6 for part in ("api", "worker", "redis")}
    out["total"] = out["api"] + out["worker"] + out["redis"]
    out["generator"] = generator / n * 1e6
    return out


def run(args: argparse.Namespace | None = None) -> Report:
    args = args or parser().parse_args([])
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-budget-ab-"))
    after_path = f"{ROOT / 'src'}:{ROOT}"
    figures: dict[float, dict[str, list[dict[str, float]]]] = {}
    with checkout(args.before) as before:
        paths = {"before": f"{before.root / 'src'}:{ROOT}", "after": after_path}
        for rate in args.rates:
            by_side = figures.setdefault(rate, {"before": [], "after": []})
            for i in range(args.rounds):
                order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
                for side in order:
                    got = measure(paths[side], rate, args.seconds, log_dir)
                    by_side[side].append(got)
                    parts = ", ".join(f"{k} {v:.1f}" for k, v in got.items())
                    print(f"{rate:,.0f}/s round {i + 1}/{args.rounds} {side}: {parts}", flush=True)
        commit = before.commit
    return _report(args, commit, figures)


def _median(rounds: list[dict[str, float]], part: str) -> float:
    return statistics.median(r[part] for r in rounds)


def _ratios(sides: dict[str, list[dict[str, float]]], part: str) -> list[float]:
    """after / before of `part` in each round (the two trees measured minutes apart)."""
    return [a[part] / b[part] for b, a in zip(sides["before"], sides["after"], strict=True)]


def _report(
    args: argparse.Namespace, commit: str, figures: dict[float, dict[str, list[dict[str, float]]]]
) -> Report:
    lines = [
        f"CPU us per task of the tree before (`{commit}`) and this one, on the same stack "
        f"(Redis with AOF on, the API with 2 processes, one worker), {args.rounds} rounds of "
        f"{args.seconds:g} s per rate, the two trees in turn (alternating which goes first). "
        "Medians of the rounds; the ratio is after / before within each round, then the "
        "median of the rounds' ratios (min-max), below 1 when this tree costs less.",
        "",
        "| rate | part | before | after | after / before |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    summary = []
    for rate, sides in figures.items():
        for part in PARTS:
            b, a = _median(sides["before"], part), _median(sides["after"], part)
            ratios = _ratios(sides, part)
            name = "generator (not in the total)" if part == "generator" else part
            bold = "**" if part == "total" else ""
            ratio = (
                f"{bold}{statistics.median(ratios):.3f}{bold} ({min(ratios):.3f}-{max(ratios):.3f})"
            )
            lines.append(f"| {rate:,.0f}/s | {name} | {b:.1f} | {a:.1f} | {ratio} |")
        summary.append(f"{rate:,.0f}/s total {statistics.median(_ratios(sides, 'total')):.3f}")
    lines += [
        "",
        "- Each round: a fresh stack, a 1 s warm-up at 1,000/s, the Redis emptied and its AOF "
        "rewritten, then the rate for the window; CPU from the first request until every task "
        "was done (as `bench.budget`'s first window), divided by the tasks.",
        "- The generator's CPU per request is the same code for both trees, yet it moves "
        "with them: on two CPUs every process's CPU per unit of work grows with the load "
        "around it (shared caches, scheduling), so a tree that uses less CPU makes the others "
        "cheaper too. Part of a total's fall is that, not the tree's own work.",
        f"- Command: `python -m bench.budget_ab --before {args.before} --rates "
        f"{' '.join(f'{r:g}' for r in args.rates)} --seconds {args.seconds:g} --rounds "
        f"{args.rounds}`.",
        f"- Measured: {machine()}; the machine is shared.",
    ]
    return Report(TITLE, "budget A/B: " + "; ".join(summary), "\n".join(lines))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.budget_ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--before", default=BEFORE, help="the revision to compare against")
    parser.add_argument("--rates", type=float, nargs="+", default=[5000.0, 10000.0])
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds offered per round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per tree and rate")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
