"""``spillway queue pause|resume|events`` and ``spillway cancel``: an operator's controls in a
surge, and a live view of a queue."""

from __future__ import annotations

import contextlib
from typing import get_args

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from spillway.app import Spillway
from spillway.bulk import MAX_PAGE, CancelFilter
from spillway.cli.base import _echo_json, _settings, _with_app, main
from spillway.lanes import Priority
from spillway.records import QueueEvent, TaskStatus

_FOREVER = 10.0**8  # seconds: a follow without --for ends with Ctrl-C


@main.group()
def queue() -> None:
    """Pause or resume a queue: a paused queue accepts tasks, but workers start none."""


def _change(ctx: click.Context, name: str, paused: bool, yes: bool, as_json: bool) -> None:
    action = "pause" if paused else "resume"
    if not yes:
        consequence = (
            "workers will start none of its tasks until it is resumed; running ones finish"
            if paused
            else "workers will start its waiting tasks"
        )
        click.confirm(f"{action.capitalize()} queue {name!r}? ({consequence})", abort=True)

    async def run(app: Spillway) -> bool:
        return await (app.pause(name) if paused else app.resume(name))

    changed = _with_app(Spillway(_settings(ctx)), run)
    if as_json:
        _echo_json({"queue": name, "paused": paused, "changed": changed})
        return
    state = "paused" if paused else "resumed"
    note = "" if changed else f" (it already was {'paused' if paused else 'running'})"
    click.echo(f"queue {name!r} {state}{note}")


@queue.command("pause")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def queue_pause(ctx: click.Context, name: str, yes: bool, as_json: bool) -> None:
    """Stop workers starting tasks of queue NAME (within ~0.1 s and one read); accepts go on."""
    _change(ctx, name, True, yes, as_json)


@queue.command("resume")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def queue_resume(ctx: click.Context, name: str, yes: bool, as_json: bool) -> None:
    """Let workers start tasks of queue NAME again."""
    _change(ctx, name, False, yes, as_json)


@queue.command("events")
@click.argument("name")
@click.option(
    "-s", "--status", "statuses", multiple=True, type=click.Choice([s.value for s in TaskStatus]),
    help="Only changes to this status (repeatable).",
)  # fmt: skip
@click.option("-t", "--type", "types", multiple=True, help="Only tasks of this type (repeatable).")
@click.option("--last-event-id", metavar="ID", help="Start after this event (ids: --json).")
@click.option("-n", "--count", type=click.IntRange(min=1), help="Stop after N events.")
@click.option(
    "--for", "seconds", type=click.FloatRange(min=0, max=_FOREVER), metavar="SECONDS",
    help="Stop after SECONDS.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event.")
@click.pass_context
def queue_events(
    ctx: click.Context,
    name: str,
    statuses: tuple[str, ...],
    types: tuple[str, ...],
    last_event_id: str | None,
    count: int | None,
    seconds: float | None,
    as_json: bool,
) -> None:
    """Print each status change of queue NAME's tasks as it happens, until Ctrl-C (or --count
    events, or --for seconds): queued, running, failed with a retry to come, and each final
    status, as GET /queues/{name}/events streams them."""

    async def run(app: Spillway) -> None:
        events = app.queue_events(
            name, statuses=[TaskStatus(s) for s in statuses] or None, types=types or None,
            last_event_id=last_event_id, timeout=_FOREVER if seconds is None else seconds,
        )  # fmt: skip
        seen = 0
        async with contextlib.aclosing(events):
            async for event in events:
                click.echo(_event_line(event, as_json))
                seen += 1
                if seen == count:
                    return

    with contextlib.suppress(KeyboardInterrupt):
        _with_app(Spillway(_settings(ctx)), run)


def _event_line(event: QueueEvent, as_json: bool) -> str:
    if as_json:
        return orjson.dumps({"event_id": event.event_id, **event.doc()}).decode()
    if event.gap:
        return "-- gap: changes were missed (the server no longer held them) --"
    at = f"{event.at:%H:%M:%S.%f}"[:-3] if event.at else ""
    return f"{at}  {event.status:<9}  {event.task_type}  {event.task_id}  attempt {event.attempts}"


@main.command()
@click.option("-q", "--queue", "queue_name", help="Only tasks of this queue.")
@click.option("-t", "--type", "task_type", help="Only tasks of this type.")
@click.option("-p", "--priority", type=click.Choice(get_args(Priority)), help="Only this priority.")
@click.option(
    "--older-than", type=click.FloatRange(min=0, max=10**9), metavar="SECONDS",
    help="Only tasks accepted at least SECONDS ago.",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Count the matching tasks; cancel none.")
@click.option("-y", "--yes", is_flag=True, help="Do not count first and ask for confirmation.")
@click.option(
    "--page", type=click.IntRange(1, MAX_PAGE), default=500, show_default=True,
    help="Tasks read per round (each round is bounded work in Redis).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the totals as JSON.")
@click.pass_context
def cancel(
    ctx: click.Context,
    queue_name: str | None,
    task_type: str | None,
    priority: Priority | None,
    older_than: float | None,
    dry_run: bool,
    yes: bool,
    page: int,
    as_json: bool,
) -> None:
    """Cancel the waiting tasks (queued, delayed, waiting for a retry) a filter selects.

    Give at least one of --queue, --type, --priority, --older-than; every one given must
    hold. Running tasks are not touched. Safe to repeat: a task already ended is skipped.
    """
    if not any(v is not None for v in (queue_name, task_type, priority, older_than)):
        raise click.UsageError("give at least one of --queue, --type, --priority, --older-than")
    match = CancelFilter(queue_name, task_type, priority, older_than)
    settings = _settings(ctx)
    matched = None
    if dry_run or not yes:
        matched = _with_app(Spillway(settings), lambda app: _sweep(app, match, page, True))[0]
        if dry_run:
            _report(as_json, {"matched": matched, "cancelled": 0, "dry_run": True},
                    f"{matched} waiting task(s) match")  # fmt: skip
            return
        if not matched:
            _report(as_json, {"matched": 0, "cancelled": 0, "dry_run": False},
                    "no waiting task matches")  # fmt: skip
            return
        click.confirm(f"Cancel {matched} waiting task(s)? This cannot be undone.", abort=True)
    found, cancelled = _with_app(Spillway(settings), lambda app: _sweep(app, match, page, False))
    _report(as_json, {"matched": found, "cancelled": cancelled, "dry_run": False},
            f"cancelled {cancelled} task(s)")  # fmt: skip


async def _sweep(app: Spillway, match: CancelFilter, page: int, dry_run: bool) -> tuple[int, int]:
    """Every page of a bulk cancel, with a progress bar on stderr: (matched, cancelled)."""
    matched = cancelled = 0
    total = await app.broker.work.backlog(match.lanes(await app.broker.admin.known_queues()))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[found]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        bar = progress.add_task("counting" if dry_run else "cancelling", total=total, found="")
        cursor: str | None = None
        while True:
            done = await app.cancel_matching(match, cursor=cursor, limit=page, dry_run=dry_run)
            matched += done.matched
            cancelled += done.cancelled
            found = f"{matched} matched" if dry_run else f"{cancelled} cancelled"
            progress.update(bar, advance=done.examined, found=found)
            if not done.more:
                return matched, cancelled
            cursor = done.cursor


def _report(as_json: bool, doc: dict[str, object], line: str) -> None:
    if as_json:
        _echo_json(doc)
    else:
        click.echo(line)
