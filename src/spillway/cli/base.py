"""The ``spillway`` command group and the helpers its commands share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.markup import escape

from spillway.app import Spillway
from spillway.errors import ConfigurationError, SpillwayError
from spillway.logs import setup_logging
from spillway.settings import Settings
from spillway.supervisor import EXIT_CONFIG

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
