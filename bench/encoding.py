"""Task records in Redis's compact hash encoding against its default bound.

    python -m bench.encoding [--rate 5000] [--seconds 8] [--rounds 3] [--no-write]

Redis keeps a hash as a listpack (one allocation) while every value is at most
``hash-max-listpack-value`` bytes (64 by default), else as a hash table. A task record holds its
payload and result, so with the default a payload over 64 bytes gives every record a table.
The embedded server raises the bound to `spillway.embedded.HASH_LISTPACK_VALUE`. Each round runs
`bench.latency`'s stack (Redis with AOF on, the API with 2 processes, one worker) once with
Redis's default bound and once with Spillway's, in turn: `--rate` tasks/s through HTTP for
`--seconds`, then reads what the records cost Redis: memory per task, the time an AOF rewrite
of the same dataset takes and its fork, the rewritten base's bytes per key, Redis's CPU per
task while the tasks ran and the rewrites it began meanwhile, and its CPU to delete the
records (as their TTL will). Every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import Report, machine, standalone
from bench.http.run import PREFIX
from bench.latency import aof_base_bytes, measure_rate, rewrite_aof, stack, tree_cpu
from spillway.embedded import HASH_LISTPACK_VALUE, find_redis_server

__all__ = ["TITLE", "run"]

TITLE = "Task records: compact encoding"
DEFAULT_BOUND = 64  # Redis's hash-max-listpack-value
ARMS = {
    f"Redis's default ({DEFAULT_BOUND} bytes)": DEFAULT_BOUND,
    f"Spillway's embedded server ({HASH_LISTPACK_VALUE:,} bytes)": HASH_LISTPACK_VALUE,
}


@dataclass
class Round:
    """One arm measured once."""

    encoding: str
    memory: float  # used_memory bytes per task
    rewrite_s: float  # BGREWRITEAOF of the dataset, wall time
    fork_ms: float
    base_bytes: float  # the rewritten AOF's base, bytes per key
    redis_cpu: float  # us per task while the tasks ran, its AOF rewrites included
    rewrites: int  # AOF rewrites Redis began while the tasks ran
    rewriting_s: float  # their wall time
    rewrites_cpu: float  # their children's CPU, us per task
    delete_cpu: float  # us of Redis CPU per record deleted


def _one(bound: int, rate: float, seconds: float) -> Round:
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-encoding-"))
    # Given last, the bound overrides the embedded server's own.
    with stack(log_dir, redis_args=("--hash-max-ziplist-value", str(bound))) as s:
        client = redis.Redis.from_url(s.redis.url)
        try:
            measure_rate(s, 1000, 2)  # warm-up
            before = client.info("memory")["used_memory"]
            r = measure_rate(s, rate, seconds)
            if r.bad:
                raise RuntimeError(f"{r.bad} requests failed at {rate:g}/s (bound {bound})")
            memory = (client.info("memory")["used_memory"] - before) / r.answered
            records = list(client.scan_iter(match="{" + PREFIX + ":*:task:*", count=1000))
            encoding = client.object("encoding", records[0])
            rewrite_s = rewrite_aof(client)
            fork_ms = client.info("stats")["latest_fork_usec"] / 1000
            base_bytes = aof_base_bytes(s.redis) / client.dbsize()
            cpu = tree_cpu(s.redis.pid)
            pipe = client.pipeline(transaction=False)
            for key in records:
                pipe.delete(key)
            pipe.execute()
            delete_cpu = (tree_cpu(s.redis.pid) - cpu) / len(records) * 1e6
        finally:
            client.close()
    return Round(
        encoding.decode() if isinstance(encoding, bytes) else str(encoding),
        memory,
        rewrite_s,
        fork_ms,
        base_bytes,
        r.cpu["redis"] / r.answered * 1e6,
        len(r.rewrites),
        sum(end - start for start, end in r.rewrites),
        r.cpu["aof_rewrites"] / r.answered * 1e6,
        delete_cpu,
    )


def run(args: argparse.Namespace | None = None) -> Report:
    args = args or parser().parse_args([])
    rounds: dict[str, list[Round]] = {name: [] for name in ARMS}
    for i in range(args.rounds):
        for name, bound in ARMS.items():
            rounds[name].append(_one(bound, args.rate, args.seconds))
            r = rounds[name][-1]
            print(
                f"round {i + 1}, {name}: {r.encoding}, {r.memory:.0f} B/task, "
                f"rewrite {r.rewrite_s:.2f} s, Redis {r.redis_cpu:.1f} us/task",
                flush=True,
            )
    return _report(rounds, args)


def _median(values: list[float], fmt: str) -> str:
    return fmt.format(statistics.median(values))


def _report(rounds: dict[str, list[Round]], args: argparse.Namespace) -> Report:
    rows = []
    for name, rs in rounds.items():
        rows.append(
            f"| {name} | {rs[0].encoding} | "
            + " | ".join(
                [
                    _median([r.memory for r in rs], "{:,.0f}"),
                    _median([r.rewrite_s * 1000 for r in rs], "{:,.0f} ms"),
                    _median([r.fork_ms for r in rs], "{:.1f} ms"),
                    _median([r.base_bytes for r in rs], "{:.0f}"),
                    _median([r.redis_cpu for r in rs], "{:.1f}"),
                    _median([float(r.rewrites) for r in rs], "{:.0f}"),
                    _median([r.rewriting_s for r in rs], "{:.2f} s"),
                    _median([r.rewrites_cpu for r in rs], "{:.1f}"),
                    _median([r.delete_cpu for r in rs], "{:.2f}"),
                ]
            )
            + " |"
        )
    pairs = list(zip(*(rounds[name] for name in ARMS), strict=True))

    def ratio_of(field: str) -> float:
        return float(statistics.median(getattr(o, field) / getattr(d, field) for d, o in pairs))

    ratio = {
        "memory": ratio_of("memory"),
        "rewrite": ratio_of("rewrite_s"),
        "cpu": ratio_of("redis_cpu"),
        "delete": ratio_of("delete_cpu"),
    }
    tasks = int(args.rate * args.seconds)
    command = (
        f"python -m bench.encoding --rate {args.rate:g} --seconds {args.seconds:g} "
        f"--rounds {args.rounds}"
    )
    markdown = "\n".join(
        [
            f"What a task record costs Redis under each `hash-max-listpack-value` bound "
            f"(`hash-max-ziplist-value` before Redis 7), after {tasks:,} tasks at "
            f"{args.rate:,.0f}/s through HTTP (the bench's payload is 74 bytes of JSON). "
            f"Medians of {args.rounds} rounds, the two bounds in turn.",
            "",
            "| bound | record encoding | memory per task (bytes) | AOF rewrite of the dataset "
            "| its fork | rewritten bytes per key | Redis CPU per task while running (us) "
            "| rewrites while running | their time | their CPU per task (us) "
            "| Redis CPU per record deleted (us) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"- Spillway's bound against the default, the median of each round's ratio: memory "
            f"{ratio['memory']:.2f}, rewrite time {ratio['rewrite']:.2f}, Redis CPU while "
            f"running {ratio['cpu']:.2f}, deleting {ratio['delete']:.2f}.",
            "- While running: Redis's CPU (its rewrite children's included) from the first request "
            "until every task was done; the rewrites Redis began on its own meanwhile (at the "
            "embedded server's 400 % threshold), how long they ran (`INFO persistence` every "
            "50 ms) and their children's CPU.",
            "- Memory: `used_memory` after the tasks less before, per task (each record is kept "
            "for `SPILLWAY_RESULT_TTL`). The rewrite: `BGREWRITEAOF` of that dataset (the "
            "records and the empty streams), timed until Redis reports it done; its fork from "
            "`latest_fork_usec`. Deleting: a pipeline of `DEL`, one per record, as the records' "
            "expiry will.",
            f"- Command: `{command}` (`make bench` runs it as `python -m bench.run encoding`).",
            f"- Measured: {machine(find_redis_server())}.",
        ]
    )
    summary = (
        f"compact records: memory x{ratio['memory']:.2f}, AOF rewrite time "
        f"x{ratio['rewrite']:.2f}, Redis CPU x{ratio['cpu']:.2f}, deletes x{ratio['delete']:.2f}"
    )
    return Report(TITLE, summary, markdown)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.encoding",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=5000.0, help="tasks/s offered")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds offered per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the two bounds in turn")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
