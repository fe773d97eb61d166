"""The story benchmark's output: the phase tables, one figure per design, docs/seed-story.md,
the raw seconds in docs/benchmarks-data/story.json, and the docs/benchmarks.md section."""

from __future__ import annotations

import argparse
import collections
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import Report
from bench.story import Run

__all__ = ["write"]

_LABEL = {"sync": "synchronous design", "spillway": "Spillway"}
_FULL = (10_000.0, 30.0)  # the story's surge: rate/s and seconds (issue 19)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] if ordered else 0.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def _phases(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    b, s = args.baseline_seconds, args.surge_seconds
    return [("baseline", 0, b), ("surge", b, b + s), ("baseline after", b + s, 2 * b + s)]


def _phase_rows(run: Run, args: argparse.Namespace) -> list[str]:
    rows = []
    for name, start, end in _phases(args):
        seconds = run.load.seconds[int(start) : int(end)]
        span = max(end - start, 1)
        lat = [x for s in seconds for x in s.latencies]
        errors: collections.Counter[str] = collections.Counter()
        for s in seconds:
            errors.update(s.errors)
        shown = ", ".join(f"{k} {v:,}" for k, v in errors.most_common()) or "none"
        samples = [s for s in run.samples if start < s.t <= end + 0.5]
        conns = max((s.connections for s in samples), default=0)
        backlog = max((s.backlog or 0 for s in samples), default=0)
        rows.append(
            f"| {name} | {sum(s.offered for s in seconds) / span:,.0f} "
            f"| {sum(s.answered for s in seconds) / span:,.0f} | {_ms(_p(lat, 50))} "
            f"| {_ms(_p(lat, 99))} | {shown} | {conns} "
            f"| {'-' if run.design == 'sync' else f'{backlog:,}'} |"
        )
    return rows


def _figure(run: Run, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_panels = 4 if run.design == "spillway" else 3
    fig, axes = plt.subplots(n_panels, 1, figsize=(8, 2.3 * n_panels), sharex=True)
    t = [i + 0.5 for i in range(len(run.load.seconds))]  # each second at its middle
    secs = run.load.seconds
    axes[0].plot(t, [s.offered for s in secs], label="offered/s", color="#8b949e")
    axes[0].plot(t, [s.answered for s in secs], label="answered 2xx/s", color="#1f6feb")
    errs = [sum(s.errors.values()) for s in secs]
    axes[0].plot(t, errs, label="errors/s", color="#cf222e")
    axes[0].set_ylabel("requests/s")
    with_lat = [(i + 0.5, s.latencies) for i, s in enumerate(secs) if s.latencies]
    axes[1].plot([i for i, _ in with_lat], [_p(v, 50) * 1000 for _, v in with_lat], label="p50")
    axes[1].plot([i for i, _ in with_lat], [_p(v, 99) * 1000 for _, v in with_lat], label="p99")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("latency (ms)")
    st = [s.t for s in run.samples]
    axes[2].plot(st, [s.connections for s in run.samples], label="connections")
    axes[2].plot(st, [s.busy for s in run.samples], label="busy")
    bound = args.db_concurrency if run.design == "spillway" else args.pool_size * args.api_workers
    axes[2].axhline(bound, color="#8b949e", linestyle=":", label=f"bound {bound}")
    axes[2].set_ylabel("PostgreSQL")
    if run.design == "spillway":
        axes[3].plot(st, [s.backlog or 0 for s in run.samples], label="backlog", color="#bf8700")
        axes[3].set_ylabel("tasks")
        rows = axes[3].twinx()  # rows grow far past the backlog: their own scale
        rows.plot(st, [s.rows for s in run.samples], label="rows written", color="#1a7f37")
        rows.set_ylabel("rows written")
        rows.legend(loc="upper left", fontsize=7)
    for ax in axes:
        ax.axvspan(args.baseline_seconds, args.baseline_seconds + args.surge_seconds,
                   color="#cf222e", alpha=0.08)  # fmt: skip
        ax.legend(loc="upper right", fontsize=7)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds (surge shaded)")
    axes[0].set_title(
        f"{_LABEL[run.design]}: {args.surge_rate:,.0f}/s for {args.surge_seconds:g} s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _totals(run: Run) -> str:
    drained = "not within the run" if run.drained_s is None else f"{run.drained_s:.0f} s"
    per_cpu = run.rows / run.cpu_seconds if run.cpu_seconds else 0.0
    return (
        f"| {_LABEL[run.design]} | {run.accepted:,} | {run.rows:,} | {run.lost:,} "
        f"| {drained} | {per_cpu:,.0f} |"
    )


def _data(run: Run) -> dict[str, Any]:
    return {
        "design": run.design, "accepted": run.accepted, "rows": run.rows, "lost": run.lost,
        "drained_s": run.drained_s, "cpu_seconds": run.cpu_seconds,
        "seconds": [
            {"offered": s.offered, "answered": s.answered, "p50": _p(s.latencies, 50),
             "p99": _p(s.latencies, 99), "errors": dict(s.errors)}
            for s in run.load.seconds
        ],
        "samples": [asdict(s) for s in run.samples],
    }  # fmt: skip


def write(runs: list[Run], args: argparse.Namespace, where: str) -> Report:
    """Draw the figures, write seed-story.md and the data; the docs/benchmarks.md section."""
    out: Path = args.out
    (out / "benchmarks-data").mkdir(parents=True, exist_ok=True)
    (out / "benchmarks-data" / "story.json").write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "runs": [_data(r) for r in runs]},
            indent=1,
        )
    )
    totals_head = (
        "| design | accepted | rows written | lost | back to baseline after the surge "
        "| rows per CPU-second |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    )
    totals = "\n".join([totals_head, *(_totals(r) for r in runs)])
    sections = []
    for r in runs:
        figure = f"seed-story-{r.design}.png"
        _figure(r, args, out / figure)
        head = (
            "| phase | offered/s | answered 2xx/s | p50 | p99 | errors | max connections "
            "| max backlog |\n| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
        )
        rows = "\n".join(_phase_rows(r, args))
        sections.append(f"### {_LABEL[r.design]}\n\n{head}\n{rows}\n\n![{figure}]({figure})\n")
    smoke = (args.surge_rate, args.surge_seconds) < _FULL
    warning = (
        "> **Smoke scale, not the story's figures:** this page was written by a small run that "
        "only proves the benchmark works; `make bench-story` at its defaults writes the real "
        "one.\n\n"
        if smoke
        else ""
    )
    command = "make bench-story" + (
        f' STORY_ARGS="--surge-rate {args.surge_rate:g} --surge-seconds {args.surge_seconds:g}'
        f' --baseline-seconds {args.baseline_seconds:g} --baseline-rate {args.baseline_rate:g}"'
        if smoke else ""
    )  # fmt: skip
    doc = _DOC.format(
        warning=warning, b=args.baseline_seconds, br=args.baseline_rate, s=args.surge_seconds,
        sr=args.surge_rate, conns=args.connections, timeout=args.client_timeout,
        pool=args.pool_size, pool_timeout=args.pool_timeout, api=args.api_workers,
        dbc=args.db_concurrency, wp=args.worker_processes, wc=args.worker_concurrency,
        totals=totals, sections="\n".join(sections), command=command, where=where,
    )  # fmt: skip
    (out / "seed-story.md").write_text(doc)
    summary = "; ".join(
        f"{_LABEL[r.design]}: {r.accepted:,} accepted, {r.rows:,} rows, {r.lost} lost" for r in runs
    )
    markdown = (
        f"{warning}The seed's surge ({args.surge_rate:,.0f}/s for {args.surge_seconds:g} s "
        f"between baselines of {args.baseline_rate:,.0f}/s) offered to each design with "
        f"PostgreSQL behind it; the method, the per-phase tables and the figures are in "
        f"[seed-story.md](seed-story.md).\n\n{totals}\n\n- Command: `{command}`.\n"
        f"- Measured: {where}.\n"
    )
    return Report(title="The seed's story with PostgreSQL", summary=summary, markdown=markdown)


_DOC = """\
# The seed's story, with a real database

{warning}The seed's note tells of a synchronous API that, at 10,000+ requests/s, saw its
answers climb past 2 s and its database pool run dry. Here the same business function (place
an order: look its price up by index, insert it once per request id, take the stock, one
transaction; `examples/orders/db.py`) sits behind both front doors, and the same surge is
offered to each in turn, on the same machine, each against a fresh throw-away PostgreSQL.

## Method

- **Load:** an open-loop generator (`bench/story_load.py`): {br:,.0f} requests/s for {b:g} s,
  then **{sr:,.0f}/s for {s:g} s**, then {br:,.0f}/s for {b:g} s. A request is due at its
  time whatever the server does, and its latency runs from then. It opens connections as
  callers arrive, up to {conns:,}, and a caller gives up {timeout:g} s after its request was
  due (`client-timeout`).
- **Synchronous design** (`examples/orders/sync_api.py`): uvicorn with {api} processes, each
  with an asyncpg pool of {pool} connections and a {pool_timeout:g} s pool timeout (answered
  `503 pool-timeout`); it answers `200` once the order is committed.
- **Spillway** (`examples/orders/tasks.py`): `POST /process` on `spillway api` with {api}
  processes answers `202` once the task is in Redis (AOF on); {wp} worker process(es) of
  concurrency {wc} place the orders, `@app.task(concurrency={dbc})` holding the database to
  {dbc} orders at once across every worker.
- **Sampled every second:** offered, answered (2xx), p50/p99 of the answers received that
  second, errors by kind, the design's connections in `pg_stat_activity` (by the pool's
  `application_name`) and how many are busy, Spillway's backlog (`stats()`: in the streams
  plus delayed), rows written, the machine's CPU (/proc/stat).
- **After the load:** Spillway's backlog drains; "back to baseline" counts from the surge's
  end until the backlog is as small as in the first baseline (Spillway) or the per-second p99
  is back within twice the baseline's (synchronous). Every accepted request's row is then
  looked up: **lost** is accepted minus found. **Rows per CPU-second** divides the rows
  written by the busy CPU-seconds of the whole machine (every process: generator, servers,
  workers, Redis, PostgreSQL) from the load's start to the drain's end.

## Results

{totals}

{sections}
Raw per-second data: `docs/benchmarks-data/story.json`. Command: `{command}`.
Measured: {where}.
"""
