"""Overload: tasks offered over HTTP at twice what the worker drains, for a minute (issue 21).

    python -m bench.overload [--seconds 60] [--task-ms 10] [--concurrency 15] [--ratio 2]
                             [--no-write]

Starts a throw-away redis-server (AOF on, fsync every second), Spillway's API
(`spillway.api.serve`, 2 processes, backlog limit off as in the other HTTP benchmarks) and ONE
worker process (`--concurrency`) running `bench/http/spillway_app.py`'s `pause` task (it waits
`--task-ms`: an I/O call's stand-in), so the worker drains at most concurrency x 1000 / task-ms
tasks/s. The open-loop generator (`bench.http.openloop`) offers `--ratio` times that for
`--seconds`; a thread samples the backlog (the stream's length: tasks accepted and not
finished) and the finished count every 0.5 s, through the minute and until the backlog has
drained. Each second's accept latencies (from when a request was due to its answer) give
that second's p99. The figure goes to docs/overload.png; every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench import ROOT, Report, machine, standalone
from bench.http.run import PREFIX
from bench.latency import offer_tasks, pct, stack
from spillway.broker.keys import Keys

__all__ = ["TITLE", "run"]

TITLE = "Overload: twice what the worker drains, for a minute"
APP = "bench.http.spillway_app:app"
FIGURE = ROOT / "docs" / "overload.png"
DATA = ROOT / "docs" / "benchmarks-data" / "overload.json"
ACCEPT_P99_GOAL_MS = 25.0


@dataclass
class Sample:
    t: float  # seconds since the offer began
    backlog: int
    finished: int


@dataclass
class Result:
    """One overload run (its JSON is docs/benchmarks-data/overload.json)."""

    offered_per_s: float
    accepted: int
    bad: int  # non-202 answers and socket errors
    accept_p99_ms: float
    worst_second_p99_ms: float
    drain_per_s: float  # finished during the offer, per second
    peak_backlog: int
    drained_at_s: float | None  # when the backlog was empty again, since the offer began
    per_second_p99_ms: dict[int, float]
    samples: list[Sample]


@dataclass
class Sampler:
    """Backlog and finished count, every `every` seconds, in a thread (its own client)."""

    url: str
    start: float
    every: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        shard = Keys(PREFIX).shard(0)
        self._stream, self._counters = shard.stream("default"), shard.counters
        self._client = redis.Redis.from_url(self.url)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def now(self) -> Sample:
        pipe = self._client.pipeline(transaction=False)
        pipe.xlen(self._stream)
        pipe.hget(self._counters, "pause|succeeded")
        backlog, finished = pipe.execute()
        return Sample(time.time() - self.start, int(backlog), int(finished or 0))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(self.now())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()


def run(args: argparse.Namespace | None = None) -> Report:
    args = args or parser().parse_args([])
    capacity = args.concurrency * 1000 / args.task_ms
    rate = capacity * args.ratio
    body = json.dumps({"type": "pause", "payload": {"ms": args.task_ms}}).encode()
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-overload-"))
    print(f"server logs: {log_dir}; offering {rate:,.0f}/s for {args.seconds:g} s", flush=True)
    # The control: Redis's automatic AOF rewrite off (each rewrite forks, and the child's
    # writing shares the machine's CPUs and disk with the API).
    redis_args = ["--auto-aof-rewrite-percentage", "0"] if args.no_aof_rewrite else []
    with stack(log_dir, args.concurrency, redis_args) as s:
        server, port = s.redis, s.api.port
        offer_tasks(port, 500, 2, json.dumps({"type": "pause", "payload": {"ms": 0}}).encode())
        client = redis.Redis.from_url(server.url)
        shard = Keys(PREFIX).shard(0)
        client.hdel(shard.counters, "pause|succeeded")  # the warm-up's tasks do not count
        start = time.time()
        sampler = Sampler(server.url, start)
        answers, errors = offer_tasks(port, rate, args.seconds, body)
        offered_end = time.time() - start
        deadline = time.monotonic() + args.drain_timeout
        accepted = sum(1 for a in answers if a.status == 202)
        while sampler.now().finished < accepted and time.monotonic() < deadline:
            time.sleep(0.5)
        sampler.samples.append(sampler.now())
        sampler.stop()
        client.close()
        binary = server.binary
    per_second: dict[int, list[float]] = {}
    for a in answers:
        per_second.setdefault(int(a.due - start), []).append(a.seconds * 1000)
    seconds = sorted(s for s in per_second if 0 <= s < args.seconds)
    p99s = [pct(per_second[s], 99) for s in seconds]
    all_ms = [a.seconds * 1000 for a in answers]
    samples = sampler.samples
    in_minute = [s for s in samples if s.t <= offered_end]
    peak = max((s.backlog for s in samples), default=0)
    drained_in_minute = in_minute[-1].finished if in_minute else 0
    drain_rate = drained_in_minute / offered_end if offered_end else 0.0
    drained_at = next((s.t for s in samples if s.t > offered_end and s.backlog == 0), None)
    bad = errors + sum(1 for a in answers if a.status != 202)
    result = Result(
        rate, accepted, bad, pct(all_ms, 99), max(p99s, default=0.0), drain_rate, peak,
        drained_at, dict(zip(seconds, p99s, strict=True)), samples,
    )  # fmt: skip
    if not args.no_write:
        DATA.parent.mkdir(parents=True, exist_ok=True)
        DATA.write_text(json.dumps(dataclasses.asdict(result)) + "\n")
        _figure(result, args)
    return _report(result, args, binary)


def _figure(result: Result, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    p99 = result.per_second_p99_ms
    top.plot([s + 0.5 for s in p99], list(p99.values()), label="accept p99, each second")
    top.axhline(ACCEPT_P99_GOAL_MS, color="#cf222e", linestyle="--", label="25 ms")
    top.set_ylabel("ms")
    top.legend(loc="upper right")
    t = [x.t for x in result.samples]
    bottom.plot(t, [x.backlog for x in result.samples], label="backlog (tasks)")
    bottom.plot(t, [x.finished for x in result.samples], label="finished (tasks)")
    bottom.axvline(args.seconds, color="#8b949e", linestyle=":", label="offer ends")
    bottom.set_xlabel("seconds since the offer began")
    bottom.legend(loc="upper left")
    fig.suptitle(
        f"{result.offered_per_s:,.0f} tasks/s offered for {args.seconds:g} s to a worker "
        f"draining {result.drain_per_s:,.0f}/s"
    )
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=100)
    plt.close(fig)


def _report(result: Result, args: argparse.Namespace, binary: str | None) -> Report:
    worst = result.worst_second_p99_ms
    verdict = "met" if worst <= ACCEPT_P99_GOAL_MS else "missed"
    drained_text = (
        f"empty {result.drained_at_s - args.seconds:.0f} s after the offer ended"
        if result.drained_at_s is not None
        else f"not empty {args.drain_timeout:g} s after the offer ended"
    )
    ratio = result.offered_per_s / max(result.drain_per_s, 1.0)
    command = (
        f"python -m bench.overload --seconds {args.seconds:g} --task-ms {args.task_ms} "
        f"--concurrency {args.concurrency} --ratio {args.ratio:g}"
    )
    summary = (
        f"offered {result.offered_per_s:,.0f}/s, drained {result.drain_per_s:,.0f}/s "
        f"(x{ratio:.2f}); accept p99 {result.accept_p99_ms:.1f} ms, worst second "
        f"{worst:.1f} ms ({verdict}); peak backlog {result.peak_backlog:,}; {drained_text}"
    )
    markdown = "\n".join(
        [
            f"An open-loop generator offers `POST /tasks` at {args.ratio:g}x what ONE worker "
            f"process can drain (`--concurrency {args.concurrency}`, each task waiting "
            f"{args.task_ms} ms: at most {args.concurrency * 1000 / args.task_ms:,.0f} "
            f"tasks/s) for {args.seconds:g} s, against Spillway's API (2 processes). The "
            "backlog grows for the whole minute; the accept path must not slow down with it.",
            "",
            "| offered tasks/s | drained tasks/s (during the offer) | offered / drained "
            "| accept p99 (whole run) | worst second's accept p99 | goal | peak backlog "
            "| after the offer | non-202 + errors |",
            "| ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: |",
            f"| {result.offered_per_s:,.0f} | {result.drain_per_s:,.0f} | {ratio:.2f} "
            f"| {result.accept_p99_ms:.1f} ms | **{worst:.1f} ms** "
            f"| <= {ACCEPT_P99_GOAL_MS:g} ms every second: **{verdict}** "
            f"| {result.peak_backlog:,} | {drained_text} | {result.bad} |",
            "",
            "![accept p99 per second and the backlog](overload.png)",
            "",
            f"- Command: `{command}` (`make bench` runs it as `python -m bench.run overload`).",
            "- Backlog: the stream's length (tasks accepted and not finished), sampled every "
            "0.5 s; the API's backlog limit is off, as in the other HTTP benchmarks, so "
            "nothing is refused (with the default limit of 100,000 a longer surge gets 429s "
            "with Retry-After instead). Raw figures: `docs/benchmarks-data/overload.json`.",
            "- The generator, the API, the worker and Redis share the machine's "
            f"{os.cpu_count()} CPUs.",
            f"- Measured: {machine(binary)}.",
        ]
    )
    return Report(TITLE, summary, markdown)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--task-ms", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=15)
    parser.add_argument("--ratio", type=float, default=2.0)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument(
        "--no-aof-rewrite", action="store_true", help="Redis's automatic AOF rewrite off"
    )
    parser.add_argument("--no-write", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
