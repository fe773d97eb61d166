"""What an AOF rewrite costs with and without Redis's RDB compression, on the same dataset.

    python -m bench.rewrite [--rate 10000] [--seconds 20] [--rounds 3] [--no-write]

An AOF rewrite writes the whole dataset in RDB form (``aof-use-rdb-preamble yes``), and with
``rdbcompression yes`` (Redis's default) it compresses every string longer than 20 bytes with
LZF, each task record's listpack among them. Each round runs `bench.latency`'s stack once per
payload (the bench's own, and an order of about 700 bytes of JSON, which compresses well),
offers `--rate` tasks/s for `--seconds` through HTTP, then rewrites that
dataset with compression on and off in turn, twice each: the child's CPU, the wall time until
Redis reports the rewrite done, and the rewritten base's size. Every process started is stopped
by its PID.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import Report, machine, standalone
from bench.http.run import PAYLOAD
from bench.latency import aof_base_bytes, measure_rate, rewrite_aof, stack, tree_cpu
from spillway.embedded import EmbeddedRedis, find_redis_server

__all__ = ["TITLE", "run"]

TITLE = "AOF rewrites: RDB compression"
SETTINGS = ("yes", "no")  # rdbcompression: Redis's default, then the embedded server's
REWRITES = 2  # per setting and dataset, in turn
# An order's lines: JSON that repeats its keys, as most payloads do (about 700 bytes in all).
_LINES = [
    {"sku": f"SKU-{i:05d}", "quantity": i % 7 + 1, "price": f"{i * 3.7:.2f}"} for i in range(12)
]
PAYLOADS: dict[str, tuple[str, dict[str, object]]] = {
    "the bench's (74 bytes)": ("resize", PAYLOAD),
    "an order (about 700 bytes of JSON)": ("order", {"customer": "C-1042", "lines": _LINES}),
}


@dataclass
class Rewrite:
    """One rewrite of one dataset."""

    cpu_ms: float  # the child's CPU
    wall_ms: float
    base_mb: float  # the rewritten base file


def _rewrite(client: redis.Redis, server: EmbeddedRedis, compression: str) -> Rewrite:
    client.config_set("rdbcompression", compression)
    cpu = tree_cpu(server.pid)
    wall = rewrite_aof(client)
    cpu = tree_cpu(server.pid) - cpu
    return Rewrite(cpu * 1000, wall * 1000, aof_base_bytes(server) / 1e6)


def _one(
    task: tuple[str, dict[str, object]], rate: float, seconds: float
) -> dict[str, list[Rewrite]]:
    body = json.dumps({"type": task[0], "payload": task[1]}).encode()
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-rewrite-"))
    with stack(log_dir) as s:
        client = redis.Redis.from_url(s.redis.url)
        try:
            measure_rate(s, 1000, 2)  # warm-up
            r = measure_rate(s, rate, seconds, body=body)
            if r.bad:
                raise RuntimeError(f"{r.bad} requests failed at {rate:g}/s")
            done: dict[str, list[Rewrite]] = {setting: [] for setting in SETTINGS}
            for _ in range(REWRITES):
                for setting in SETTINGS:
                    done[setting].append(_rewrite(client, s.redis, setting))
        finally:
            client.close()
    return done


def run(args: argparse.Namespace | None = None) -> Report:
    args = args or parser().parse_args([])
    rounds: dict[str, dict[str, list[Rewrite]]] = {
        name: {setting: [] for setting in SETTINGS} for name in PAYLOADS
    }
    for i in range(args.rounds):
        for name, task in PAYLOADS.items():
            for setting, rewrites in _one(task, args.rate, args.seconds).items():
                rounds[name][setting] += rewrites
            line = ", ".join(
                f"{setting}: {statistics.median(w.cpu_ms for w in rounds[name][setting]):.0f} ms "
                f"CPU, {rounds[name][setting][-1].base_mb:.1f} MB"
                for setting in SETTINGS
            )
            print(f"round {i + 1}, {name}: {line}", flush=True)
    return _report(rounds, args)


def _report(rounds: dict[str, dict[str, list[Rewrite]]], args: argparse.Namespace) -> Report:
    rows, ratios = [], {}
    for name, by_setting in rounds.items():
        medians = {
            setting: Rewrite(
                statistics.median(w.cpu_ms for w in rewrites),
                statistics.median(w.wall_ms for w in rewrites),
                statistics.median(w.base_mb for w in rewrites),
            )
            for setting, rewrites in by_setting.items()
        }
        for setting, m in medians.items():
            rows.append(
                f"| {name} | `{setting}` | {m.cpu_ms:,.0f} ms | {m.wall_ms:,.0f} ms "
                f"| {m.base_mb:.1f} MB |"
            )
        on, off = medians["yes"], medians["no"]
        ratios[name] = (off.cpu_ms / on.cpu_ms, off.base_mb / on.base_mb)
    tasks = int(args.rate * args.seconds)
    command = (
        f"python -m bench.rewrite --rate {args.rate:g} --seconds {args.seconds:g} "
        f"--rounds {args.rounds}"
    )
    markdown = "\n".join(
        [
            f"An AOF rewrite of the dataset {tasks:,} tasks left (their records and the empty "
            f"streams), at `rdbcompression yes` (Redis's default) and `no` (the embedded "
            f"server's), in turn on the same dataset. Medians of {REWRITES * args.rounds} "
            f"rewrites per cell, over {args.rounds} rounds.",
            "",
            "| payload | `rdbcompression` | the rewrite's CPU | its wall time | rewritten base |",
            "| --- | --- | ---: | ---: | ---: |",
            *rows,
            "",
            *(
                f"- Without compression ({name}): the rewrite's CPU x{cpu:.2f}, its base "
                f"x{size:.2f}."
                for name, (cpu, size) in ratios.items()
            ),
            f"- Each dataset: {tasks:,} tasks at {args.rate:,.0f}/s through HTTP on "
            "`bench.latency`'s stack (Redis with AOF on, the API with 2 processes, one worker); "
            "the order is `bench.http.spillway_app`'s `order` task with 12 lines. CPU: "
            "the rewrite child's user + system seconds; wall: `BGREWRITEAOF` until `INFO "
            "persistence` reports it done.",
            f"- Command: `{command}` (`make bench` runs it as `python -m bench.run rewrite`).",
            f"- Measured: {machine(find_redis_server())}.",
        ]
    )
    summary = ", ".join(
        f"{name}: rewrite CPU x{cpu:.2f}, base x{size:.2f} without compression"
        for name, (cpu, size) in ratios.items()
    )
    return Report(TITLE, summary, markdown)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rewrite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=10000.0, help="tasks/s offered")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds offered per dataset")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the two payloads")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
