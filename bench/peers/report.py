"""What the suite found, three ways: a rich table, a section of docs/benchmarks.md, a chart."""

from __future__ import annotations

import platform
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.peers.peers import SLEEP_CONCURRENCY, Peer
from bench.peers.suite import SLEEP_TASKS, Figure, Plan, Results

__all__ = [
    "TITLE",
    "Context",
    "Targets",
    "print_tables",
    "render_markdown",
    "targets",
    "targets_text",
    "update_docs",
    "wrap_section",
    "write_chart",
]

BEGIN = "<!-- bench.peers: begin (written by `python -m bench.peers`, do not edit by hand) -->"
END = "<!-- bench.peers: end -->"
TITLE = "Peers: drain / sleep workload / enqueue"
IDEAL_SLEEP = SLEEP_TASKS / SLEEP_CONCURRENCY * 0.5
MODES = ("sequential", "concurrent", "batched")
MODE_TITLES = {
    "sequential": "one by one, awaited",
    "concurrent": "concurrent (100 in flight)",
    "batched": "batched (1,000 per call)",
}


@dataclass(frozen=True, slots=True)
class Context:
    """Where and how the figures were made."""

    command: str
    plan: Plan
    when: str
    machine: str
    versions: dict[str, str]

    @classmethod
    def here(cls, command: str, plan: Plan, peers: tuple[Peer, ...]) -> Context:
        redis_version = subprocess.run(  # noqa: S603 - fixed argument list
            [_redis_server(), "--version"], capture_output=True, text=True, check=False
        ).stdout
        found = re.search(r"v=(\S+)", redis_version)
        nproc = len(__import__("os").sched_getaffinity(0))
        machine = (
            f"{nproc} CPUs ({platform.processor() or platform.machine()}), Linux "
            f"{platform.release()}, Python {platform.python_version()}, "
            f"redis-server {found[1] if found else 'unknown'} on loopback"
        )
        names = sorted({p for peer in peers for p in peer.packages} | {"uvloop"})
        return cls(
            command=command,
            plan=plan,
            when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine,
            versions={name: _version(name) for name in names},
        )


@dataclass(frozen=True, slots=True)
class Targets:
    """Spillway's ratios against issue 4's targets (None: not measurable in this run)."""

    drain_ratio: float | None  # Spillway / fastest peer; target >= 3
    fastest_drain: str | None
    sleep_ratio: float | None  # Spillway wall / ideal; target <= 1.15
    batch_ratio: float | None  # Spillway enqueue_many / streaq enqueue_many; target >= 5


def targets(results: Results, peers: tuple[Peer, ...]) -> Targets:
    spillway = results.drain.get("spillway", Figure()).median
    rivals = [(p.label, results.drain[p.key].median) for p in peers if p.key != "spillway"]
    ranked = sorted(((v, label) for label, v in rivals if v is not None), reverse=True)
    drain_ratio = spillway / ranked[0][0] if spillway and ranked else None
    sleep = results.sleep.get("spillway", Figure()).median
    ours = results.enqueue.get("spillway", {}).get("batched", Figure()).median
    theirs = results.enqueue.get("streaq", {}).get("batched", Figure()).median
    return Targets(
        drain_ratio=drain_ratio,
        fastest_drain=ranked[0][1] if ranked else None,
        sleep_ratio=sleep / IDEAL_SLEEP if sleep else None,
        batch_ratio=ours / theirs if ours and theirs else None,
    )


# --- the terminal ------------------------------------------------------------------------------


def print_tables(results: Results, peers: tuple[Peer, ...], console: Console) -> None:
    table = Table(title="Peers, one worker process each (medians; min-max)")
    table.add_column("library")
    table.add_column("drain tasks/s", justify="right")
    table.add_column("sleep wall s", justify="right")
    for mode in MODES:
        table.add_column(f"enqueue {mode}/s", justify="right")
    for peer in peers:
        table.add_row(
            peer.label,
            _cell(results.drain[peer.key], "{:,.0f}"),
            (peer.sleep_skip and "not run") or _cell(results.sleep[peer.key], "{:.2f}"),
            *(_cell(results.enqueue[peer.key].get(m), "{:,.0f}") for m in MODES),
        )
    console.print(table)
    for line in failures(results, peers):
        console.print(f"[red]{line}[/]")
    console.print(targets_text(results, peers))


def _cell(figure: Figure | None, fmt: str) -> str:
    if figure is None:
        return "n/a"
    if figure.median is None:
        if not figure.failures:
            return "-"
        return "timeout" if figure.failures[0].startswith("timeout") else "failed"
    low, high = figure.spread or (0.0, 0.0)
    text = fmt.format(figure.median)
    if len(figure.values) > 1:
        text += f" ({fmt.format(low)}-{fmt.format(high)})"
    if figure.failures:
        text += f", {len(figure.failures)} failed"
    return text


def failures(results: Results, peers: tuple[Peer, ...]) -> list[str]:
    """One line per run that gave no figure, saying why."""
    lines: list[str] = []
    for peer in peers:
        named = {f"enqueue {m}": f for m, f in results.enqueue[peer.key].items()}
        named |= {"drain": results.drain[peer.key], "sleep": results.sleep[peer.key]}
        for what, figure in named.items():
            lines += [f"{peer.label}, {what}: {why}" for why in figure.failures]
    return lines


def targets_text(results: Results, peers: tuple[Peer, ...]) -> str:
    """Spillway's three ratios against issue 4's targets, one line each."""
    t = targets(results, peers)

    def verdict(value: float | None, ok: bool) -> str:
        return "not measured" if value is None else ("met" if ok else "MISSED")

    return "\n".join(
        [
            f"drain: Spillway / fastest peer ({t.fastest_drain}) = {_x(t.drain_ratio)} "
            f"(target >= 3x): {verdict(t.drain_ratio, (t.drain_ratio or 0) >= 3)}",
            f"sleep workload: {_x(t.sleep_ratio)} ideal (target <= 1.15x): "
            f"{verdict(t.sleep_ratio, (t.sleep_ratio or 99) <= 1.15)}",
            f"batched enqueue: Spillway / streaq enqueue_many = {_x(t.batch_ratio)} "
            f"(target >= 5x): {verdict(t.batch_ratio, (t.batch_ratio or 0) >= 5)}",
        ]
    )


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


# --- docs/benchmarks.md ------------------------------------------------------------------------


def render_markdown(results: Results, peers: tuple[Peer, ...], ctx: Context) -> str:
    """The section's body, below its heading."""
    plan = ctx.plan
    runs = f"{plan.rounds} run{'s' if plan.rounds > 1 else ''}"
    spill = results.drain["spillway"].median
    lines = [
        f"Measured {ctx.when} with `{ctx.command}` on {ctx.machine}. Each figure is the median of "
        f"{runs} (min-max in brackets); the rounds go through every library in turn, so noise on "
        "this shared machine falls on all of them. Every round has its own throw-away "
        "redis-server and every measurement starts from `FLUSHALL`. Ratios are from this run "
        "only: compare them, not the absolute figures, across machines.",
        "",
        "![drain rate and sleep workload per library](benchmarks-peers.png)",
        "",
        f"### Drain: {plan.drain_tasks:,} no-op tasks, one worker process",
        "",
        "The queue is filled first; then the library's own worker CLI runs as a subprocess. "
        "Rate = tasks / time from the first to the last task completion, taken inside the "
        "worker by a probe every task calls (no extra Redis round trip). Spillway's run is held "
        "to more: its burst worker must exit, every outcome record must be stored and every "
        "stream entry acknowledged, and its rate runs from the first to the last record's "
        "`finished_at` (the result written, not just the handler returned).",
        "",
        "| library | worker (concurrency) | tasks/s | vs Spillway |",
        "| --- | --- | ---: | ---: |",
    ]
    for peer in peers:
        fig = results.drain[peer.key]
        vs = f"{spill / fig.median:.2f}x" if spill and fig.median and peer.key != "spillway" else ""
        lines.append(f"| {peer.label} | {peer.concurrency_note} | {_cell(fig, '{:,.0f}')} | {vs} |")
    lines += [
        "",
        "\"vs Spillway\" is Spillway's rate divided by the library's.",
        "",
        f"### Sleep workload: {SLEEP_TASKS:,} x `sleep(0.5)` at concurrency {SLEEP_CONCURRENCY}, "
        "one process",
        "",
        f"Wall time from the first task's start to the last task's end; ideal {IDEAL_SLEEP:.1f} s "
        "(4 waves of 0.5 s). Async libraries `await asyncio.sleep(0.5)`; Dramatiq and Celery "
        "`time.sleep(0.5)` in 500 threads.",
        "",
        "| library | wall s | x ideal |",
        "| --- | ---: | ---: |",
    ]
    for peer in peers:
        fig = results.sleep[peer.key]
        if peer.sleep_skip:
            lines.append(f"| {peer.label} | not run: {peer.sleep_skip} | |")
            continue
        ratio = f"{fig.median / IDEAL_SLEEP:.2f}x" if fig.median else ""
        lines.append(f"| {peer.label} | {_cell(fig, '{:.2f}')} | {ratio} |")
    lines += [
        "",
        f"### Enqueue from Python: {plan.enqueue_tasks:,} no-op tasks, one producer process",
        "",
        "Tasks/s, timed after connecting. Concurrent mode (async libraries) keeps 100 enqueues "
        "in flight with `asyncio.gather` (redis-py 8's default pool holds 100 connections and "
        "raises beyond). Batched mode uses the library's batch API where it has one: Spillway "
        "`enqueue_many`, streaq `enqueue_many`, RQ `enqueue_many`, Celery `group().apply_async()` "
        "(which still publishes one message per task).",
        "",
        "| library | " + " | ".join(MODE_TITLES[m] for m in MODES) + " |",
        "| --- | " + " | ".join("---:" for _ in MODES) + " |",
    ]
    for peer in peers:
        cells = [_cell(results.enqueue[peer.key].get(m), "{:,.0f}") for m in MODES]
        lines.append(f"| {peer.label} | " + " | ".join(cells) + " |")
    failed = failures(results, peers)
    if failed:
        lines += ["", "Runs that gave no figure:", "", *(f"- {line}" for line in failed)]
    t = targets(results, peers)
    lines += [
        "",
        "### Against issue 4's targets",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
        f"| drain >= 3x the fastest peer per worker process | {_x(t.drain_ratio)} "
        f"({t.fastest_drain}) | {_met(t.drain_ratio, (t.drain_ratio or 0) >= 3)} |",
        f"| sleep workload <= 1.15x ideal (2.3 s) | {_x(t.sleep_ratio)} | "
        f"{_met(t.sleep_ratio, (t.sleep_ratio or 99) <= 1.15)} |",
        f"| batched enqueue >= 5x streaq `enqueue_many` | {_x(t.batch_ratio)} | "
        f"{_met(t.batch_ratio, (t.batch_ratio or 0) >= 5)} |",
        "",
        "### How each library is configured",
        "",
        "Each is used the way its docs show (see the module docstrings in `bench/peers/`). "
        "Result storage is off where the library makes it optional (arq `keep_result=0`, streaq "
        "`ttl=0`, SAQ `ttl=-1`, RQ `result_ttl=0`; taskiq, Dramatiq and Celery have no result "
        "backend configured). Spillway always stores each task's outcome record, so its figures "
        "include that write. redis-py clients use hiredis. arq >= 0.26 pins redis-py < 6, which "
        "Spillway's redis-py >= 7 excludes: arq is the newest release that installs beside it. "
        "SAQ gets a redis-py pool of 2 x concurrency + 100 connections: with redis-py 8's "
        "default cap of 100 its worker failed with `MaxConnectionsError` at 100 jobs.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in ctx.versions.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def wrap_section(body: str) -> str:
    """The body under our heading, between markers (bench.update_section keeps them too)."""
    return f"{BEGIN}\n## {TITLE}\n\n{body}\n{END}\n"


def _met(value: float | None, ok: bool) -> str:
    return "not measured" if value is None else ("**met**" if ok else "**missed**")


def update_docs(path: Path, section: str) -> None:
    """Replace our marked section of `path` (or append it), leaving the rest as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = text.find(BEGIN), text.find(END)
    if start != -1 and end != -1:
        rest = text[end + len(END) :].lstrip("\n")
        text = text[:start] + section + (f"\n{rest}" if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# --- the chart ---------------------------------------------------------------------------------


def write_chart(results: Results, peers: tuple[Peer, ...], path: Path) -> None:
    """Two bar charts: drain tasks/s (higher is better), sleep wall s (lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    names = [p.label.split(" (")[0] for p in peers]
    colours = ["#1f6feb" if p.key == "spillway" else "#8b949e" for p in peers]
    drain = [results.drain[p.key].median or 0.0 for p in peers]
    left.barh(names, drain, color=colours)
    left.invert_yaxis()
    left.set_title("No-op drain, one worker process (tasks/s, higher is better)", fontsize=10)
    for y, value in enumerate(drain):
        left.text(value, y, f" {value:,.0f}", va="center", fontsize=8)
    sleepers = [p for p in peers if p.sleep_skip is None]
    walls = [results.sleep[p.key].median or 0.0 for p in sleepers]
    right.barh(
        [p.label.split(" (")[0] for p in sleepers], walls,
        color=["#1f6feb" if p.key == "spillway" else "#8b949e" for p in sleepers],
    )  # fmt: skip
    right.invert_yaxis()
    right.axvline(IDEAL_SLEEP, color="#2da44e", linestyle="--", linewidth=1)
    right.set_title("2,000 x sleep(0.5) at concurrency 500 (wall s, lower is better)", fontsize=10)
    for y, value in enumerate(walls):
        right.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    for ax in (left, right):
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _redis_server() -> str:
    from spillway.embedded import find_redis_server

    return find_redis_server()
