"""``spillway worker``, ``spillway api`` and ``spillway dev``: the commands that run Spillway."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from spillway import metrics, views
from spillway.cli.base import (
    _logging_options,
    _require_redis,
    main,
)
from spillway.errors import ConfigurationError
from spillway.loading import EXAMPLE_APP, load_app
from spillway.logs import LogFormat, setup_logging
from spillway.settings import Settings
from spillway.supervisor import Supervisor


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
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, envvar="SPILLWAY_METRICS_HOST",
    help="Address the metrics port listens on (0.0.0.0: every interface).",
)  # fmt: skip
@_logging_options
def worker(
    app_ref: str,
    concurrency: int | None,
    processes: int,
    queues: tuple[str, ...],
    burst: bool,
    metrics_port: int | None,
    metrics_host: str,
    log_level: str,
    log_format: LogFormat,
) -> None:
    """Run the tasks of APP from its queues until SIGTERM or Ctrl-C.

    On SIGTERM a worker stops reading, gives running tasks SPILLWAY_SHUTDOWN_GRACE seconds
    to finish, hands the rest back for other workers and exits 0. With --processes P a
    supervisor runs P worker processes, restarts crashed ones with a capped exponential
    backoff, and forwards SIGTERM/SIGINT to all of them. With --burst each process exits once
    the queues are empty, and so does the supervisor. With SPILLWAY_API_KEYS set, a scrape
    of the metrics port needs one of the keys, as the API's /metrics does.
    """
    setup_logging(log_level, log_format)
    app = load_app(app_ref)
    _require_redis(app)
    if processes == 1:
        from spillway.worker import run_worker

        if metrics_port is not None:
            metrics.serve(metrics_port, metrics_host, _metrics_gate(app.settings))
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
            metrics.serve(metrics_port, metrics_host, _metrics_gate(app.settings))
        sys.exit(supervisor.run())


def _metrics_gate(settings: Settings) -> metrics.Admit | None:
    """Who may scrape a worker's metrics: with API keys set, an admin key (the API's own
    check; its `/metrics` is an admin's too)."""
    from spillway.api.auth import Auth
    from spillway.api.problems import HTTPProblem

    auth = Auth(settings.api_keys, admin_keys=settings.admin_keys)
    if not auth.enabled:
        return None

    def admit(headers: list[tuple[bytes, bytes]]) -> bool:
        try:
            return auth.identify(headers).admin
        except HTTPProblem:
            return False

    return admit


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
