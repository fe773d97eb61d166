"""`serve`: run the HTTP API of a Spillway application under uvicorn (what `spillway api` does).

uvicorn starts its worker processes on its own, so each one builds the application from a
factory here, which imports the application named in ``SPILLWAY_API_APP``.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from spillway.api import uvicorn_fast
from spillway.app import Spillway
from spillway.errors import BrokerUnavailable, ConfigurationError
from spillway.loading import load_app
from spillway.settings import Settings

__all__ = ["APP_ENV", "HEAD_LIMIT", "STARTUP_FAILURE", "Server", "build", "serve", "server"]

log = logging.getLogger("spillway.api")

#: The environment variable that tells the server's processes which application to serve.
APP_ENV = "SPILLWAY_API_APP"

#: The largest request head accepted, in bytes as sent: the request line, the header lines
#: and the blank line's CRLF. One byte more gets 431 (under the fast protocol only).
HEAD_LIMIT = 64 * 1024

#: The exit status of a server whose start-up failed (the application's lifespan refused to
#: start, say against a Redis that may evict keys): uvicorn's own, which its supervisor of
#: several processes takes as "do not restart".
STARTUP_FAILURE = 3

#: Seconds a stopping process gives the requests in flight before it closes their connections
#: (without a bound, one client that never finishes its request keeps the process running).
GRACEFUL_SHUTDOWN = 10


def build() -> FastAPI:
    """The server's factory: the API of the application named in ``SPILLWAY_API_APP``."""
    from spillway.api.app import create_app

    app_ref = os.environ.get(APP_ENV)
    if not app_ref:
        raise ConfigurationError(f"{APP_ENV} is not set; start the API with `spillway api APP`")
    api = create_app(load_app(app_ref))
    # Move the objects of the imports and the app out of the collector's reach: a full
    # collection walking them stalled every request in flight
    # (docs/benchmarks.md#freezing-the-collector).
    gc.freeze()
    return api


def serve(app_ref: str, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve the API of ``module:attribute`` until SIGTERM or SIGINT, then return.

    The application is imported once here first, so a wrong reference fails at once with a
    clear message instead of inside every worker, and the Redis server is checked once: one
    that may evict keys (or is too old, or holds another shard count) ends the process with
    `STARTUP_FAILURE` before it listens, whatever the uvicorn version or process count.
    """
    app = load_app(app_ref)
    try:
        asyncio.run(_check_redis(app))
    except ConfigurationError as exc:
        log.error("Not serving: %s", exc)
        sys.exit(STARTUP_FAILURE)
    settings = app.settings
    os.environ[APP_ENV] = app_ref
    server(
        "spillway.api.serve:build",
        host=host,
        port=port,
        workers=workers,
        factory=True,
        settings=settings,
    ).serve()


async def _check_redis(app: Spillway) -> None:
    """Refuse a Redis Spillway must not run on; one that is down is each process's to wait for."""
    try:
        await app.connect()
    except BrokerUnavailable:
        pass  # each process serves 503s until Redis answers (its lifespan says so)
    finally:
        await app.close()


class Server:
    """A configured uvicorn server: `serve` runs it in this process or as ``workers`` processes
    sharing one listening socket, until SIGTERM or SIGINT."""

    def __init__(self, config: uvicorn.Config) -> None:
        self.config = config

    @property
    def fast(self) -> bool:
        """Whether it serves with the fenced protocol (`spillway.api.uvicorn_fast`)."""
        return isinstance(self.config, uvicorn_fast.ServerConfig)

    def serve(self) -> None:
        """Serve until stopped; exit with `STARTUP_FAILURE` if the server never started."""
        from uvicorn.supervisors import Multiprocess

        if self.config.workers > 1:
            sock = self.config.bind_socket()
            # uvicorn < 0.51 takes the target each process runs; later ones build it.
            takes_target = "target" in inspect.signature(Multiprocess).parameters
            extra = {"target": _Run(self.config)} if takes_target else {}
            Multiprocess(self.config, sockets=[sock], **extra).run()
            return
        # uvicorn stops gracefully on SIGTERM or SIGINT, then raises the signal again for the
        # handler it found in place. With the default one the process would end killed by the
        # signal; a stop that was asked for ends with status 0.
        previous = {sig: signal.signal(sig, _ignore) for sig in _STOP_SIGNALS}
        try:
            _Run(self.config)()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _Run:
    """Run one server process; exit with `STARTUP_FAILURE` if it never started.

    uvicorn >= 0.50 exits so itself when the application's lifespan fails; older ones only
    return, and the process would end with 0 as if it had served and been stopped. (Their
    supervisor of several processes restarts such a process, which is why `serve` checks
    Redis once before any process starts.)
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self.config = config

    def __call__(self, sockets: list[Any] | None = None) -> None:
        server = uvicorn.Server(self.config)
        server.run(sockets=sockets)
        if not server.started:
            sys.exit(STARTUP_FAILURE)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Stands in for the default handler while uvicorn serves (see `Server.serve`)."""


def server(
    target: str | Any,
    *,
    host: str,
    port: int,
    workers: int,
    factory: bool = False,
    settings: Settings | None = None,
    **options: Any,
) -> Server:
    """The uvicorn server `serve` runs, for any ASGI `target` (the benchmarks' ceiling uses it).

    HTTP/1.1 on httptools and uvloop, no websockets, no access log and no proxy headers.
    With ``settings.fast_path`` on and `spillway.api.uvicorn_fast.probe` passing, the protocol
    is `spillway.api.uvicorn_fast.FastProtocol`: direct routes, the request head bounded in
    size (`HEAD_LIMIT`) and time (``settings.head_timeout``), every body bounded in time
    (``settings.body_timeout``) and a lingering close after a refused body. Otherwise it is
    uvicorn's own httptools protocol, with one warning saying why; the application answers
    the same, without the head bounds, and with the body deadline the accept routes keep
    themselves (docs/security.md#connection-limits says what each path does). `options` are
    more `uvicorn.Config` arguments (the tests' in-process servers pass some). uvicorn over
    granian: it answered more requests in the same runs (docs/benchmarks.md#http-accept).
    """
    settings = settings or Settings()
    if workers > 1:
        options["workers"] = workers
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "factory": factory,
        "loop": "uvloop",
        "ws": "none",
        "lifespan": "on",
        "interface": "asgi3",
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN,
        **options,
    }
    why_not = uvicorn_fast.probe() if settings.fast_path else "SPILLWAY_FAST_PATH is off"
    if why_not is None:
        config: uvicorn.Config = uvicorn_fast.ServerConfig(
            target,
            head_limit=HEAD_LIMIT,
            head_timeout=settings.head_timeout,
            body_timeout=settings.body_timeout,
            **common,
        )
    else:
        log.warning(
            "Serving with uvicorn %s's own httptools protocol, without direct routes or the "
            "server's bounds on request heads and lingering closes: %s",
            uvicorn.__version__,
            why_not,
        )
        config = uvicorn.Config(target, http="httptools", **common)
    return Server(config)
