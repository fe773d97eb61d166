"""``spillway stats``, ``dlq``, ``submit`` and ``status``: looking after the queues."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import click
import orjson
from rich.console import Console
from rich.live import Live
from rich.progress import MofNCompleteColumn, Progress

from spillway import views
from spillway.app import Spillway
from spillway.cli.base import (
    _echo_json,
    _settings,
    _with_app,
    main,
)
from spillway.loading import load_app
from spillway.records import DeadTask, TaskRecord


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--watch", type=click.FloatRange(min=0.1), metavar="SECONDS",
    help="Refresh every SECONDS until Ctrl-C (with --json: one JSON object per line).",
)  # fmt: skip
@click.pass_context
def stats(ctx: click.Context, as_json: bool, watch: float | None) -> None:
    """Show each queue's backlog, pending, delayed and dead tasks, live workers and outcomes."""
    app = Spillway(_settings(ctx))

    async def once(app: Spillway) -> None:
        figures = await app.stats()
        if as_json:
            _echo_json(figures.model_dump(mode="json"))
        else:
            Console().print(views.stats(figures))

    async def forever(app: Spillway) -> None:
        if as_json:
            while True:
                line = orjson.dumps((await app.stats()).model_dump(mode="json"))
                click.echo(line.decode())
                await asyncio.sleep(watch or 1)
        with Live(auto_refresh=False) as live:
            while True:
                live.update(views.stats(await app.stats()), refresh=True)
                await asyncio.sleep(watch or 1)

    if watch is None:
        _with_app(app, once)
    else:
        with contextlib.suppress(KeyboardInterrupt):
            _with_app(app, forever)


@main.group()
def dlq() -> None:
    """List, replay or purge dead-lettered tasks (those that used up their retries)."""


@dlq.command("list")
@click.option("-q", "--queue", help="Only this queue.  [default: every queue]")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def dlq_list(ctx: click.Context, queue: str | None, limit: int, as_json: bool) -> None:
    """Show the newest dead letters with their last error."""
    dead = _with_app(Spillway(_settings(ctx)), lambda app: app.dead_letters(queue, limit))
    if as_json:
        _echo_json([d.model_dump(mode="json") for d in dead])
        return
    Console().print(views.dead_letters(dead))


@dlq.command("replay")
@click.argument("task_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("-q", "--queue", help="With --all: only this queue.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def dlq_replay(
    ctx: click.Context, task_id: str | None, replay_all: bool, queue: str | None, yes: bool
) -> None:
    """Queue dead-lettered tasks again, under their own ids: TASK_ID, or --all."""
    if (task_id is None) == (not replay_all):
        raise click.UsageError("give either a TASK_ID or --all")
    settings = _settings(ctx)
    if replay_all:
        waiting = _with_app(Spillway(settings), lambda app: app.dead_letters(queue, 100_000))
        where = f" from queue {queue!r}" if queue else ""
        if not waiting:
            click.echo(f"no dead letters{where}")
            return
        if not yes:
            click.confirm(f"Replay {len(waiting)} dead-lettered task(s){where}?", abort=True)
        count = _with_app(Spillway(settings), lambda app: _replay_each(app, waiting))
        click.echo(f"replayed {count} task(s)")
        return
    assert task_id is not None  # noqa: S101 - checked above
    if not yes:
        click.confirm(f"Replay task {task_id}?", abort=True)
    if not _with_app(Spillway(settings), lambda app: app.replay(task_id)):
        raise click.ClickException(f"task {task_id!r} is not in the dead letters")
    click.echo("replayed 1 task(s)")


async def _replay_each(app: Spillway, dead: list[DeadTask]) -> int:
    """Replay each dead letter, with a progress bar on stderr."""
    replayed = 0
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True) as progress:  # fmt: skip
        bar = progress.add_task("replaying", total=len(dead))
        for d in dead:
            replayed += await app.broker.admin.dlq_replay(d)
            progress.advance(bar)
    return replayed


@dlq.command("purge")
@click.option("-q", "--queue", help="Only this queue.  [default: every queue]")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def dlq_purge(ctx: click.Context, queue: str | None, yes: bool) -> None:
    """Delete dead letters for good (their task records expire on their own)."""
    settings = _settings(ctx)
    where = f" of queue {queue!r}" if queue else ""
    if not yes:
        waiting = _with_app(Spillway(settings), lambda app: app.dead_letters(queue, 100_000))
        if not waiting:
            click.echo(f"no dead letters{where}")
            return
        click.confirm(f"Delete {len(waiting)} dead letter(s){where}? This cannot be undone.",
                      abort=True)  # fmt: skip
    count = _with_app(Spillway(settings), lambda app: app.purge_dead_letters(queue))
    click.echo(f"purged {count} dead letter(s)")


# --- single tasks ------------------------------------------------------------------------------


def _parse_json(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None


@main.command()
@click.argument("task_type", metavar="TYPE")
@click.argument("payload", metavar="JSON", callback=_parse_json)
@click.option(
    "--app", "app_ref", metavar="APP", envvar="SPILLWAY_APP", required=True,
    help="The application that declares TYPE (validates the payload).  [env: SPILLWAY_APP]",
)  # fmt: skip
@click.option("--idempotency-key", help="Submitting the same key twice runs the task once.")
@click.option("--delay", type=click.FloatRange(min=0), help="Seconds before the task may run.")
@click.option(
    "--wait", type=click.FloatRange(min=0), metavar="SECONDS",
    help="Wait up to SECONDS for the outcome and print it.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="With --wait: print the record as JSON.")
def submit(
    task_type: str,
    payload: Any,
    app_ref: str,
    idempotency_key: str | None,
    delay: float | None,
    wait: float | None,
    as_json: bool,
) -> None:
    """Enqueue a task of TYPE with the JSON payload; prints its id."""
    app = load_app(app_ref)

    async def run(app: Spillway) -> TaskRecord | None:
        task_id = await app.enqueue(
            task_type, payload, idempotency_key=idempotency_key, delay=delay
        )
        click.echo(task_id)
        return None if wait is None else await app.wait(task_id, wait)

    record = _with_app(app, run)
    if record is not None:
        _print_record(record, as_json)


@main.command()
@click.argument("task_id")
@click.option(
    "--wait", type=click.FloatRange(min=0), metavar="SECONDS",
    help="Wait up to SECONDS for the task to finish first.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.pass_context
def status(ctx: click.Context, task_id: str, wait: float | None, as_json: bool) -> None:
    """Show a task's status record: status, attempts, result or error, times."""

    async def fetch(app: Spillway) -> TaskRecord:
        return await (app.get(task_id) if wait is None else app.wait(task_id, wait))

    _print_record(_with_app(Spillway(_settings(ctx)), fetch), as_json)


def _print_record(record: TaskRecord, as_json: bool) -> None:
    if as_json:
        _echo_json(record.model_dump(mode="json"))
    else:
        Console().print(views.record(record), highlight=False)
