"""What the ``spillway`` command shows in a terminal: rich tables and panels, no I/O."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import orjson
from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from spillway.app import Spillway
from spillway.lanes import parse_lane
from spillway.records import DeadTask, Stats, TaskRecord

__all__ = ["dead_letters", "dev_panel", "local_time", "masked", "record", "stats"]


def dev_panel(
    app: Spillway, app_ref: str, port: int, redis_url: str, embedded: bool, has_api: bool
) -> Panel:
    """Where to look while `spillway dev` runs."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    base = f"http://127.0.0.1:{port}"
    task_type, payload = (
        ("word_count", '{"text": "to be or not to be"}')
        if "word_count" in app.tasks
        else (next(iter(app.tasks), "TYPE"), "{}")
    )
    body = f'{{"type": "{task_type}", "payload": {payload}}}'
    if has_api:
        grid.add_row("API", base)
        grid.add_row("Docs", f"{base}/docs")
        grid.add_row("Dashboard", f"{base}/dashboard  (metrics: {base}/metrics)")
    else:
        grid.add_row("API", "[yellow]not available yet (spillway.api is missing); worker only[/]")
    shown = masked(redis_url)
    grid.add_row("Redis", shown + ("  (embedded, removed on exit)" if embedded else ""))
    grid.add_row("App", f"{app_ref}  tasks: {', '.join(sorted(app.tasks)) or '(none)'}")
    if has_api:
        grid.add_row(
            "Submit", f"curl -s {base}/tasks -H 'content-type: application/json' -d '{body}'"
        )
        grid.add_row("Result", f"curl -s '{base}/tasks/TASK_ID?wait=10'")
    else:
        grid.add_row("Submit", f"SPILLWAY_REDIS_URL={shown} spillway submit {task_type} "
                               f"'{payload}' --app {app_ref}")  # fmt: skip
    grid.add_row("Stats", f"SPILLWAY_REDIS_URL={shown} spillway stats --watch 1")
    grid.add_row("Stop", "Ctrl-C")
    return Panel(grid, title="spillway dev is running", title_align="left", expand=False)


def masked(url: str) -> str:
    """A Redis URL with its password replaced by ``***``: a terminal is often shared or logged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def stats(figures: Stats) -> Group:
    """Queues, workers and outcome counts as tables, then limits and schedules if any."""
    paused = set(figures.paused)
    title = f"Queues ({', '.join(sorted(paused))} paused)" if paused else "Queues"
    queues = Table(title=title, title_justify="left")
    for name in ("queue", "backlog", "pending", "delayed", "dead", "state"):
        queues.add_column(name, justify="left" if name in ("queue", "state") else "right")
    for q in figures.queues:
        state = "[yellow]paused[/]" if parse_lane(q.queue).queue in paused else ""
        queues.add_row(q.queue, str(q.backlog), str(q.pending), str(q.delayed), str(q.dead), state)
    workers = Table(title=f"Workers ({len(figures.workers)} live)", title_justify="left")
    for name in ("name", "queues", "concurrency", "in flight", "processed", "last seen"):
        workers.add_column(name, justify="right" if name in ("in flight", "processed") else "left")
    for w in figures.workers:
        workers.add_row(
            w.name, ",".join(w.queues), str(w.concurrency), str(w.in_flight), str(w.processed),
            local_time(w.last_seen),
        )  # fmt: skip
    outcomes = sorted({kind for per_type in figures.counts.values() for kind in per_type})
    counts = Table(title="Outcomes", title_justify="left")
    counts.add_column("type")
    for kind in outcomes:
        counts.add_column(kind, justify="right")
    for task_type, per_type in sorted(figures.counts.items()):
        counts.add_row(task_type, *(str(per_type.get(kind, 0)) for kind in outcomes))
    tables = [queues, workers, counts]
    if figures.limits:
        limits = Table(title="Limits", title_justify="left")
        for name in ("type", "running", "concurrency", "rate", "waiting"):
            limits.add_column(name, justify="left" if name in ("type", "rate") else "right")
        for lim in figures.limits:
            limits.add_row(
                lim.type, str(lim.running), str(lim.concurrency or "-"), lim.rate_limit or "-",
                str(lim.waiting),
            )  # fmt: skip
        tables.append(limits)
    if figures.schedules:
        schedules = Table(title="Schedules", title_justify="left")
        for name in ("schedule", "type", "when", "time zone", "last run", "next run"):
            schedules.add_column(name)
        for sch in figures.schedules:
            schedules.add_row(
                sch.name, sch.type, sch.spec, sch.tz, local_time(sch.last_run),
                local_time(sch.next_run),
            )  # fmt: skip
        tables.append(schedules)
    hooks = figures.callbacks
    if hooks.due or hooks.delivered or hooks.retried or hooks.failed:
        webhooks = Table(title="Webhooks", title_justify="left")
        for name in ("waiting", "delivered", "retried", "failed"):
            webhooks.add_column(name, justify="right")
        webhooks.add_row(
            *(str(n) for n in (hooks.due, hooks.delivered, hooks.retried, hooks.failed))
        )
        tables.append(webhooks)
    return Group(*tables)


def local_time(value: datetime | None) -> str:
    """A timestamp in the local time zone, to the second; "-" for none."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def dead_letters(dead: list[DeadTask]) -> Table:
    """Dead letters, newest first, with their last error."""
    table = Table(title=f"Dead letters ({len(dead)} shown)", title_justify="left")
    table.add_column("task, last error", min_width=32, ratio=1)
    table.add_column("type")
    table.add_column("queue")
    table.add_column("tries", justify="right")
    table.add_column("failed")
    for d in dead:
        # Text, not markup: an error message is user text.
        task = Text.assemble((d.id or "-", "bold"), "\n", (d.error, "red"))
        table.add_row(task, d.type or "-", d.queue, str(d.attempts), local_time(d.failed_at))
    return table


def record(task: TaskRecord) -> Table:
    """One task's status record as a two-column grid."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    colours = {"succeeded": "green", "dead": "red", "failed": "yellow", "expired": "yellow"}
    colour = colours.get(task.status, "cyan")
    grid.add_row("id", task.id)
    grid.add_row("type", f"{task.type} (queue {task.queue})")
    grid.add_row("status", f"[{colour}]{task.status}[/]")
    grid.add_row("attempts", f"{task.attempts} of at most {task.max_retries + 1}")
    if task.result is not None:
        grid.add_row("result", escape(orjson.dumps(task.result).decode()))
    if task.error:
        grid.add_row("error", escape(task.error))
    for label, when in (
        ("created", task.created_at), ("started", task.started_at),
        ("finished", task.finished_at), ("due", task.due_at), ("expires", task.expires_at),
    ):  # fmt: skip
        if when is not None:
            grid.add_row(label, local_time(when))
    return grid
