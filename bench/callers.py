"""Two callers in a surge: scenario 16 of the fault suite (tests/chaos/test_callers.py), longer,
measured second by second and plotted.

    python -m bench.callers [--seconds 45]

One throw-away Redis (AOF on), one `spillway api` process and one worker (8 slots, tasks of
200 ms: at most 40 tasks a second), SPILLWAY_FAIR_CALLERS on and SPILLWAY_CALLER_QUOTA=0.2 of
a backlog limit of 500 (100 waiting tasks per caller). ``small`` sends a task every 100 ms;
``big`` has 100 times as many and sends them over 8 connections as fast as it may, each
refused task sent again (same ``Idempotency-Key``) after its ``Retry-After``. The surge, the
drain and the checks are the scenario's own; this adds the time series, writes
docs/callers-surge.png and prints a Markdown summary (docs/reliability.md, "Two callers in a
surge").
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
from pathlib import Path

from tests.chaos.harness import Stack
from tests.chaos.test_callers import (
    BIG,
    SETTINGS,
    SMALL,
    TOLERANCE,
    WAIT_SHARE,
    Plan,
    Surge,
    judge,
    surge,
)

from bench import ROOT, machine

__all__ = ["CHART", "main", "run", "series"]

CHART = ROOT / "docs" / "callers-surge.png"
_BIG, _SMALL, _DRAIN, _REFUSED = "#cf222e", "#1f6feb", "#1a7f37", "#bc4c00"


def _per_second(times: list[float], start: float, seconds: int) -> list[int]:
    counts = [0] * seconds
    for t in times:
        i = math.floor(t - start)
        if 0 <= i < seconds:
            counts[i] += 1
    return counts


def _moving_mean(values: list[float], n: int) -> list[float]:
    """The mean of each `n` consecutive values."""
    return [sum(values[i : i + n]) / n for i in range(len(values) - n + 1)]


def series(result: Surge) -> dict[str, list[float]]:
    """Per second from the surge's start, until the last task finished: big's 202s, 429s and
    retries (requests of a task refused before), small's 202s and 429s, the tasks finished
    (the drain rate), and the last sample of the backlog and each caller's held tasks."""
    start = result.began
    finished = result.finished()
    seconds = math.ceil(max([result.stopped, *finished]) - start) + 1
    out: dict[str, list[float]] = {"t": [float(i) for i in range(seconds)]}
    for caller in (BIG, SMALL):
        ops = result.ops(caller)
        for status in (202, 429):
            times = [op.end for op in ops if op.status == status]
            out[f"{caller}_{status}"] = [float(n) for n in _per_second(times, start, seconds)]
    seen: set[str] = set()
    retries = []
    for op in result.ops(BIG):  # in the order sent
        if op.key in seen:
            retries.append(op.start)
        seen.add(op.key)
    out["big_retries"] = [float(n) for n in _per_second(retries, start, seconds)]
    out["drain"] = [float(n) for n in _per_second(finished, start, seconds)]
    for name in ("backlog", BIG, SMALL):
        last = [0.0] * seconds
        for s in result.samples:
            i = math.floor(s.at - start)
            if 0 <= i < seconds:
                last[i] = float(s.backlog if name == "backlog" else s.waiting[name])
        out[f"held_{name}" if name != "backlog" else name] = last
    return out


def plot(result: Surge, data: dict[str, list[float]], path: Path = CHART) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = data["t"]
    fig, (rates, held, waits) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    ceiling = result.plan.drain_ceiling
    stop = result.stopped - result.began
    rates.axhline(ceiling, color="#8b949e", ls=":", lw=1, label=f"worker ceiling {ceiling:g}/s")
    step = {"drawstyle": "steps-post"}  # the count of second i is drawn over [i, i + 1)
    rates.plot(t, data["drain"], color=_DRAIN, lw=2.5, label="drained (tasks finished)", **step)
    rates.plot(t, data["big_202"], color=_BIG, lw=0.8, alpha=0.6, label="big: 202", **step)
    # Big's connections are refused together and come back together, a Retry-After later:
    # its 202s come in bursts about a second apart, so a second's count swings around the mean.
    # (The first second, the quota filling, and the seconds after the stop are left out.)
    mean = _moving_mean(data["big_202"][1 : math.floor(stop)], 5)
    rates.plot([1 + i + 2.5 for i in range(len(mean))], mean, color=_BIG, lw=2,
               label="big: 202, 5 s mean")  # fmt: skip
    rates.plot(t, data["big_429"], color=_REFUSED, lw=1, ls="--", label="big: 429", **step)
    rates.plot(t, data["big_retries"], color=_BIG, lw=1, ls=":", label="big: retries", **step)
    rates.plot(t, data["small_202"], color=_SMALL, lw=1.5, label="small: 202", **step)
    rates.plot(t, data["small_429"], color=_SMALL, lw=1, ls="--", label="small: 429", **step)
    rates.set_ylabel("per second")
    top = max(ceiling, *data["drain"], *data["big_202"][1:]) * 1.3
    rates.set_ylim(0, top)
    first = data["big_202"][0]
    if first > top:  # the first second's burst that fills big's quota
        rates.annotate(f"{first:.0f} in the first second (big's quota filling)",
                       (0.3, top * 0.93), fontsize=8, color=_BIG)  # fmt: skip
    rates.legend(fontsize=8, ncol=4, loc="upper right")
    rates.set_title(
        "Two callers in a surge: big (100x small's tasks, 8 connections, honours Retry-After) "
        "and small (1 task / 100 ms)",
        fontsize=10,
    )
    at = [x.at - result.began for x in result.samples]
    held.plot(at, [x.backlog for x in result.samples], color="#57606a", lw=1.5,
              label="queue backlog")  # fmt: skip
    for caller, colour in ((BIG, _BIG), (SMALL, _SMALL)):
        waiting = [x.waiting[caller] for x in result.samples]
        held.plot(at, waiting, color=colour, lw=1.5, label=f"{caller}'s waiting tasks")
    held.axhline(result.quota, color=_BIG, ls=":", lw=1, label=f"caller quota {result.quota}")
    held.set_ylabel("tasks (sampled every 250 ms)")
    held.legend(fontsize=8, loc="center left")
    for caller, colour in ((BIG, _BIG), (SMALL, _SMALL)):
        xs, ys = [], []
        for task_id in result.accepted_ids(caller):
            r = result.store.records.get(task_id, {})
            if "started_at" in r and "created_at" in r:
                xs.append(int(r["created_at"]) / 1000 - result.began)
                ys.append((int(r["started_at"]) - int(r["created_at"])) / 1000)
        waits.scatter(xs, ys, s=4, color=colour, label=f"{caller}: accept to start")
    waits.set_yscale("log")
    waits.set_ylabel("seconds (log)")
    waits.set_xlabel("seconds since the surge began (bottom panel: at the task's accept)")
    waits.legend(fontsize=8, loc="lower right")
    for ax in (rates, held, waits):
        ax.axvline(stop, color="#8b949e", lw=1)
        ax.grid(alpha=0.3)
    held.annotate("clients stop ", (stop, held.get_ylim()[1] * 0.45), fontsize=8, ha="right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary(result: Surge, data: dict[str, list[float]]) -> str:
    f = result.figures()
    low, high = result.window
    steady = [i for i in range(len(data["t"])) if low - result.began + 1 <= i < high - result.began]
    big_202 = sum(data["big_202"][i] for i in steady) / max(len(steady), 1)
    small_202 = sum(data["small_202"][i] for i in steady) / max(len(steady), 1)
    drain = sum(data["drain"][i] for i in steady) / max(len(steady), 1)
    verdict = result.verdict
    lines = [
        f"Measured {machine()}; `python -m bench.callers --seconds {result.plan.seconds:g}`.",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| surge (clients sending) | {f['surge_s']} s, then drained in "
        f"{verdict.notes.get('drain_s', '?')} s |",
        f"| small: tasks sent, 202, 429 | {f['small_sent']:,}, {f['small_202']:,}, "
        f"{f['small_429']} |",
        f"| big: tasks it had, requests sent, 202, 429 | {f['big_offered']:,}, "
        f"{f['big_requests']:,}, {f['big_202']:,}, {f['big_429']:,} |",
        f"| Retry-After given to big (values, mean) | {f['retry_after_s']} s, "
        f"{f['retry_after_mean_s']} s |",
        f"| drain rate after big's first refusal (worker ceiling) | {f['drain_per_s']}/s "
        f"({result.plan.drain_ceiling:g}/s) |",
        f"| big's requests after its first refusal | {f['big_attempts_per_s']}/s = "
        f"{f['big_attempts_per_drain']} x the drain (bound {TOLERANCE:g} x) |",
        f"| whole seconds in that window: big 202/s, small 202/s, drained/s | "
        f"{big_202:.1f}, {small_202:.1f}, {drain:.1f} |",
        f"| small's wait, accept to start: p50, p95, max | {f['small_wait_p50_ms']:,}, "
        f"{f['small_wait_p95_ms']:,}, {f['small_wait_max_ms']:,} ms |",
        f"| big's wait, accept to start: p50, p95 | {f['big_wait_p50_ms']:,}, "
        f"{f['big_wait_p95_ms']:,} ms (small's p95 bound: {WAIT_SHARE:g} x big's p50) |",
        f"| lost, duplicates, backlog max | {verdict.lost}, {verdict.duplicates}, "
        f"{f['backlog_max']} |",
        f"| scenario checks | {'all pass' if verdict.passed else 'FAILED'} |",
    ]
    lines += [f"- FAILED {c.name}: {c.detail}" for c in verdict.failures()]
    return "\n".join(lines)


async def measure(seconds: float) -> Surge:
    with tempfile.TemporaryDirectory(prefix="spillway-callers-") as logs:
        stack = Stack(Path(logs), settings=SETTINGS, cluster=False)
        try:
            result = await surge(
                stack, Plan(seconds=seconds), size=f"{seconds:g} s", drain_timeout=300.0
            )
            judge(result)
            return result
        finally:
            await stack.close()


def run(args: argparse.Namespace) -> tuple[Surge, str]:
    result = asyncio.run(measure(args.seconds))
    data = series(result)
    path = plot(result, data)
    return result, f"{summary(result, data)}\n\nwrote {path.relative_to(ROOT)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=45.0, help="how long the clients send")
    result, text = run(parser.parse_args(argv))
    print(text)
    return 0 if result.verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
