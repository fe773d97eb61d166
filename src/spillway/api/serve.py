"""`serve`: run the HTTP API of a Spillway application under uvicorn (what `spillway api` does).

uvicorn starts its worker processes on its own, so each one builds the application from a
factory here, which imports the application named in ``SPILLWAY_API_APP``.
"""

from __future__ import annotations

import gc
import os
import signal
from types import FrameType
from typing import Any

from fastapi import FastAPI

from spillway.api.protocol import ServerConfig
from spillway.errors import ConfigurationError
from spillway.loading import load_app
from spillway.settings import Settings

__all__ = ["APP_ENV", "HEAD_LIMIT", "Server", "build", "serve", "server"]

#: The environment variable that tells the server's processes which application to serve.
APP_ENV = "SPILLWAY_API_APP"

#: The largest request head (request line and headers) accepted; larger ones get 431.
HEAD_LIMIT = 64 * 1024

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
    # Move the ~80,000 objects of the imports and the app out of the collector's reach: a full
    # collection walking them stalled every request in flight for 40-120 ms (the p99 at 64
    # connections fell from ~60 ms to ~15 ms; docs/benchmarks.md, "HTTP accept").
    gc.freeze()
    return api


def serve(app_ref: str, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve the API of ``module:attribute`` until SIGTERM or SIGINT, then return.

    The application is imported once here first, so a wrong reference fails at once with a
    clear message instead of inside every worker.
    """
    settings = load_app(app_ref).settings
    os.environ[APP_ENV] = app_ref
    server(
        "spillway.api.serve:build",
        host=host,
        port=port,
        workers=workers,
        factory=True,
        settings=settings,
    ).serve()


class Server:
    """A configured uvicorn server: `serve` runs it in this process or as ``workers`` processes
    sharing one listening socket, until SIGTERM or SIGINT."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    def serve(self) -> None:
        import uvicorn
        from uvicorn.supervisors import Multiprocess

        if self.config.workers > 1:
            sock = self.config.bind_socket()
            Multiprocess(self.config, sockets=[sock]).run()
            return
        # uvicorn stops gracefully on SIGTERM or SIGINT, then raises the signal again for the
        # handler it found in place. With the default one the process would end killed by the
        # signal; a stop that was asked for ends with status 0.
        previous = {sig: signal.signal(sig, _ignore) for sig in _STOP_SIGNALS}
        try:
            uvicorn.Server(self.config).run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Stands in for the default handler while uvicorn serves (see `Server.serve`)."""


def server(
    target: str,
    *,
    host: str,
    port: int,
    workers: int,
    factory: bool = False,
    settings: Settings | None = None,
) -> Server:
    """The uvicorn server `serve` runs, for any ASGI `target` (the benchmarks' ceiling uses it).

    HTTP/1.1 on httptools and uvloop, no websockets, no access log and no proxy headers, with
    the request head bounded in size (`HEAD_LIMIT`) and time (``settings.head_timeout``), the
    pauses in a body bounded (``settings.body_timeout``) and a lingering close after a refused
    body (`spillway.api.protocol`). uvicorn over granian: in the same `make bench` runs on
    this 2-CPU machine it answered 2.07x as many bare requests and 1.37x as many of
    Spillway's (docs/benchmarks.md, "HTTP accept").
    """
    settings = settings or Settings()
    extra: dict[str, Any] = {}
    if workers > 1:
        extra["workers"] = workers
    return Server(
        ServerConfig(
            target,
            head_limit=HEAD_LIMIT,
            head_timeout=settings.head_timeout,
            body_timeout=settings.body_timeout,
            host=host,
            port=port,
            factory=factory,
            loop="uvloop",
            ws="none",
            lifespan="on",
            interface="asgi3",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
            **extra,
        )
    )
