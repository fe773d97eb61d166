"""The ``spillway`` command: run workers, the API or a dev stack, and look after the queues.

Settings come from ``SPILLWAY_*`` environment variables, read by each `Spillway()`; the CLI
never changes them. Expected errors (Redis down, a bad APP reference, an unknown task id) print
one red line and exit 1, or 78 for configuration errors, which a supervisor does not retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress

from spillway import metrics, views
from spillway.app import Spillway
from spillway.errors import ConfigurationError, SpillwayError
from spillway.loading import EXAMPLE_APP, AppNotFound, load_app
from spillway.logs import LogFormat, setup_logging
from spillway.records import DeadTask, TaskRecord
from spillway.settings import Settings
from spillway.supervisor import EXIT_CONFIG, Supervisor

__all__ = ["AppNotFound", "load_app", "main"]

T = TypeVar("T")


class _Main(click.Group):
    """Turns expected errors into one red line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SpillwayError as exc:
            Console(stderr=True).print(
                f"[red]Error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
            ctx.exit(EXIT_CONFIG if isinstance(exc, ConfigurationError) else 1)
        except KeyboardInterrupt:
            ctx.exit(130)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spillway")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Spillway: accept work over HTTP in under a millisecond, run it from Redis Streams.

    APP is 'module:attribute' naming a Spillway application, imported with the current
    directory on sys.path. Settings come from SPILLWAY_* environment variables; the Redis
    address is SPILLWAY_REDIS_URL (`spillway dev` starts a throw-away Redis when it is unset).
    """
    setup_logging("warning", "text")


def _logging_options(command: Callable[..., T]) -> Callable[..., T]:
    level = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        default="info", show_default=True, envvar="SPILLWAY_LOG_LEVEL",
        help="Lowest level of log events to print.",
    )  # fmt: skip
    fmt = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]), default="text", show_default=True,
        envvar="SPILLWAY_LOG_FORMAT", help="One line per event: text, or a JSON object.",
    )  # fmt: skip
    return level(fmt(command))


def _settings(ctx: click.Context) -> Settings:
    """Settings from the environment, or the ones a caller put in ``ctx.obj`` (tests do)."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Settings) else Settings()


def _with_app(app: Spillway, fn: Callable[[Spillway], Awaitable[T]]) -> T:
    """Run `fn(app)` in a fresh event loop and close the app's connections after."""

    async def run() -> T:
        try:
            return await fn(app)
        finally:
            await app.close()

    return asyncio.run(run())


def _echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _require_redis(app: Spillway) -> None:
    if not app.settings.redis_url:
        raise ConfigurationError(
            "SPILLWAY_REDIS_URL is not set. Point it at a Redis >= 6.2, "
            "or run `spillway dev`, which starts an embedded server."
        )


# --- running -----------------------------------------------------------------------------------


@main.command()
@click.argument("app_ref", metavar="APP")
@click.option(
    "-c", "--concurrency", type=click.IntRange(min=1),
    help="Tasks in flight per process.  [default: SPILLWAY_CONCURRENCY or 100]",
)  # fmt: skip
@click.option(
    "-p", "--processes", type=click.IntRange(min=1), default=1, show_default=True,
    help="Worker processes; above 1 a supervisor runs them and restarts any that crash.",
)  # fmt: skip
@click.option(
    "-q", "--queue", "queues", multiple=True, metavar="QUEUE",
    help="Consume only this queue (repeatable).  [default: every queue the app declares]",
)  # fmt: skip
@click.option("--burst", is_flag=True, help="Exit once the queues are drained.")
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), envvar="SPILLWAY_METRICS_PORT",
    help="Serve Prometheus metrics of the worker processes on this port.",
)  # fmt: skip
@_logging_options
def worker(
    app_ref: str,
    concurrency: int | None,
    processes: int,
    queues: tuple[str, ...],
    burst: bool,
    metrics_port: int | None,
    log_level: str,
    log_format: LogFormat,
) -> None:
    """Run the tasks of APP from its queues until SIGTERM or Ctrl-C.

    On SIGTERM a worker stops reading, gives running tasks SPILLWAY_SHUTDOWN_GRACE seconds
    to finish, hands the rest back for other workers and exits 0. With --processes P a
    supervisor runs P worker processes, restarts crashed ones with a capped exponential
    backoff, and forwards SIGTERM/SIGINT to all of them. With --burst each process exits once
    the queues are empty, and so does the supervisor.
    """
    setup_logging(log_level, log_format)
    app = load_app(app_ref)
    _require_redis(app)
    if processes == 1:
        from spillway.worker import run_worker

        if metrics_port is not None:
            metrics.serve(metrics_port)
        run_worker(app, concurrency=concurrency, queues=list(queues) or None, burst=burst)
        return
    child = [sys.executable, "-m", "spillway", "worker", app_ref, "--processes", "1"]
    child += ["--log-level", log_level, "--log-format", log_format]
    if concurrency is not None:
        child += ["--concurrency", str(concurrency)]
    for queue in queues:
        child += ["--queue", queue]
    if burst:
        child.append("--burst")
    supervisor = Supervisor([child] * processes, stop_timeout=app.settings.shutdown_grace + 10)
    # The children write their metrics to one directory; this process serves their sum.
    with metrics.private_multiproc_dir():
        if metrics_port is not None:
            metrics.serve(metrics_port)
        sys.exit(supervisor.run())


@main.command()
@click.argument("app_ref", metavar="APP")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True,
    help="HTTP server processes.",
)  # fmt: skip
@_logging_options
def api(
    app_ref: str, host: str, port: int, workers: int, log_level: str, log_format: LogFormat
) -> None:
    """Serve the HTTP API of APP: POST /tasks answers 202 once the task is stored in Redis."""
    setup_logging(log_level, log_format)
    load_app(app_ref)  # a clear error here beats one from inside each server process
    serve = _import_serve()
    if serve is None:
        raise ConfigurationError("the HTTP API (spillway.api) is not part of this installation")
    # Several server processes write their metrics to one directory, and /metrics sums them;
    # one process keeps them in memory, which costs the accept path less.
    shared = metrics.private_multiproc_dir() if workers > 1 else contextlib.nullcontext()
    with shared:
        serve(app_ref, host=host, port=port, workers=workers)


def _import_serve() -> Callable[..., Any] | None:
    # Imported lazily: the API pulls in the HTTP stack, which workers never need.
    try:
        module = importlib.import_module("spillway.api")
    except ModuleNotFoundError as exc:
        if exc.name == "spillway.api":
            return None
        raise
    serve: Callable[..., Any] | None = getattr(module, "serve", None)
    return serve


@main.command()
@click.argument("app_ref", metavar="[APP]", default=EXAMPLE_APP)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@_logging_options
def dev(app_ref: str, port: int, log_level: str, log_format: LogFormat) -> None:
    """Run Redis, the API and one worker for development; Ctrl-C stops them all.

    Without APP it runs the bundled example application (spillway.example:app). Without
    SPILLWAY_REDIS_URL it starts a throw-away redis-server on a free port and removes it on exit.
    """
    from spillway.embedded import EmbeddedRedis

    setup_logging(log_level, log_format)
    app = load_app(app_ref)
    env = dict(os.environ)
    with contextlib.ExitStack() as stack:
        # One metrics directory for the API and the worker: /metrics and the dashboard show both.
        env[metrics.MULTIPROC_ENV] = stack.enter_context(metrics.private_multiproc_dir())
        redis_url = env.get("SPILLWAY_REDIS_URL")
        embedded = not redis_url
        if not redis_url:
            redis_url = stack.enter_context(EmbeddedRedis()).url
            env["SPILLWAY_REDIS_URL"] = redis_url
        spillway = [sys.executable, "-m", "spillway"]
        logs = ["--log-level", log_level, "--log-format", log_format]
        commands = [[*spillway, "worker", app_ref, *logs]]
        has_api = _import_serve() is not None
        if has_api:
            commands.append([*spillway, "api", app_ref, "--port", str(port), *logs])
        supervisor = Supervisor(commands, env=env, stop_timeout=app.settings.shutdown_grace + 5)
        supervisor.start()
        Console().print(views.dev_panel(app, app_ref, port, redis_url, embedded, has_api))
        code = supervisor.wait()
    sys.exit(code)


# --- looking after the queues -----------------------------------------------------------------


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
