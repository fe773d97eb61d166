"""What the accept linger trades: CPU per task against latency, at each rate.

    python -m bench.linger [--rates 1000 5000 10000] [--seconds 10] [--rounds 2]
                           [--lingers 0.002 0.005] [--no-write]

An API process's next write to Redis waits out ``SPILLWAY_ACCEPT_LINGER`` since the last one
began while each write carries more than one task (docs/architecture.md#batching-under-load).
Each round runs `bench.latency`'s stack (Redis with AOF on, the API with 2 processes, one
worker) once per linger, in turn, at each rate: `--rate` tasks/s through HTTP for `--seconds`.
It reports the API's, the worker's and Redis's CPU per task, and the latency of the ``202``
and of the whole task. At the first rate, the same stack then answers wrk (closed loop: each of
`--connections` connections sends its next request when the last is answered) for
`--wrk-seconds`: under a linger, concurrent callers wait for each other. Every process
started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import Report, machine, standalone
from bench.http.run import wrk
from bench.latency import BODY, measure_rate, pct, stack
from spillway.embedded import find_redis_server
from spillway.settings import Settings

__all__ = ["TITLE", "run"]

TITLE = "The accept linger: CPU against latency"


@dataclass
class Run:
    """One linger at one rate, once."""

    api: float  # CPU us per task
    worker: float
    redis: float
    accept_p50: float  # ms, due -> 202
    accept_p99: float
    done_p50: float  # ms, due -> finished
    done_p99: float
    closed_rps: float | None  # wrk's requests/s, at the first rate only

    @property
    def total(self) -> float:
        return self.api + self.worker + self.redis


def _one(linger: float, rate: float, seconds: float, closed: tuple[float, int] | None) -> Run:
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-linger-"))
    with stack(log_dir, api_env={"SPILLWAY_ACCEPT_LINGER": f"{linger:g}"}) as s:
        measure_rate(s, 1000, 2)  # warm-up
        r = measure_rate(s, rate, seconds)
        rps = None
        if closed is not None:
            figures = wrk(f"http://127.0.0.1:{s.api.port}/tasks", BODY, *closed)
            if figures.non2xx or figures.socket_errors:
                raise RuntimeError(f"wrk: {figures.non2xx} non-2xx, {figures.socket_errors} errors")
            rps = figures.rps
    if r.bad:
        raise RuntimeError(f"{r.bad} requests failed at {rate:g}/s (linger {linger:g} s)")
    cpu = {name: seconds_ / r.answered * 1e6 for name, seconds_ in r.cpu.items()}
    return Run(
        cpu["api"], cpu["worker"], cpu["redis"],
        pct(r.accept_ms, 50), pct(r.accept_ms, 99), pct(r.done_ms, 50), pct(r.done_ms, 99),
        rps,
    )  # fmt: skip


def run(args: argparse.Namespace | None = None) -> Report:
    args = args or parser().parse_args([])
    runs: dict[tuple[float, float], list[Run]] = {}
    for i in range(args.rounds):
        for rate in args.rates:
            for linger in args.lingers:
                closed = (args.wrk_seconds, args.connections) if rate == args.rates[0] else None
                r = _one(linger, rate, args.seconds, closed)
                runs.setdefault((rate, linger), []).append(r)
                print(
                    f"round {i + 1}, {rate:,.0f}/s, linger {linger * 1000:g} ms: CPU "
                    f"{r.total:.1f} us/task (API {r.api:.1f}), 202 p50 {r.accept_p50:.1f} ms, "
                    f"done p99 {r.done_p99:.1f} ms",
                    flush=True,
                )
    return _report(runs, args)


def _median(rs: list[Run], field: str) -> float:
    return float(statistics.median(getattr(r, field) for r in rs))


def _report(runs: dict[tuple[float, float], list[Run]], args: argparse.Namespace) -> Report:
    default = Settings.model_fields["accept_linger"].default
    rows, notes = [], []
    for rate in args.rates:
        for linger in args.lingers:
            rs = runs[(rate, linger)]
            mark = " (the default)" if linger == default else ""
            rows.append(
                f"| {rate:,.0f} | {linger * 1000:g} ms{mark} | **{_median(rs, 'total'):.0f}** "
                f"| {_median(rs, 'api'):.0f} | {_median(rs, 'worker'):.0f} "
                f"| {_median(rs, 'redis'):.0f} | {_median(rs, 'accept_p50'):.1f} ms "
                f"| {_median(rs, 'accept_p99'):.1f} ms | {_median(rs, 'done_p50'):.1f} ms "
                f"| {_median(rs, 'done_p99'):.1f} ms |"
            )
        first, last = args.lingers[0], args.lingers[-1]
        pairs = list(zip(runs[(rate, first)], runs[(rate, last)], strict=True))
        ratio = statistics.median(b.total / a.total for a, b in pairs)
        notes.append(
            f"- {rate:,.0f}/s: CPU per task at {last * 1000:g} ms against {first * 1000:g} ms, "
            f"the median of the rounds' ratios: {ratio:.2f}."
        )
    closed_rows = []
    for linger in args.lingers:
        rps = statistics.median(r.closed_rps or 0.0 for r in runs[(args.rates[0], linger)])
        closed_rows.append(f"| {linger * 1000:g} ms | **{rps:,.0f}** |")
    lingers = " ".join(f"{linger:g}" for linger in args.lingers)
    rates = " ".join(f"{rate:g}" for rate in args.rates)
    command = (
        f"python -m bench.linger --rates {rates} --seconds {args.seconds:g} "
        f"--rounds {args.rounds} --lingers {lingers} --connections {args.connections} "
        f"--wrk-seconds {args.wrk_seconds:g}"
    )
    markdown = "\n".join(
        [
            f"CPU per task and latency at each `SPILLWAY_ACCEPT_LINGER`, the lingers in turn at "
            f"each rate through HTTP for {args.seconds:g} s; medians of {args.rounds} round"
            f"{'s' if args.rounds != 1 else ''}.",
            "",
            "| tasks/s | accept linger | CPU us per task: API + worker + Redis | API "
            "| worker | Redis | 202 p50 | 202 p99 | accept-to-done p50 | p99 |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            *notes,
            "",
            f"Closed loop: wrk with {args.connections} connections for {args.wrk_seconds:g} s "
            f"on the same stack (after the {args.rates[0]:,.0f}/s run), answered requests/s:",
            "",
            "| accept linger | requests/s |",
            "| ---: | ---: |",
            *closed_rows,
            "",
            "- The stack is `bench.latency`'s (Redis with AOF on, the API with 2 processes, one "
            "worker, the generator: all on this machine); CPU and latency as its sections "
            '"CPU budget per task" and "End to end latency" measure them.',
            f"- Command: `{command}` (`make bench` runs it as `python -m bench.run linger`).",
            f"- Measured: {machine(find_redis_server())}.",
        ]
    )
    summary = " ".join(notes).replace("- ", "")
    return Report(TITLE, summary, markdown)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.linger",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[1000.0, 5000.0, 10000.0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds offered per run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the lingers in turn")
    parser.add_argument(
        "--lingers", type=float, nargs="+", default=[0.002, 0.005], help="seconds, in turn"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk's connections")
    parser.add_argument("--wrk-seconds", type=float, default=5.0, help="wrk's run, seconds")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
