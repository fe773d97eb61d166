"""`serve`: run the HTTP API of a Spillway application under granian (what `spillway api` does).

Granian starts its worker processes on its own, so each one builds the application from a
factory here, which imports the application named in ``SPILLWAY_API_APP``.
"""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from spillway.errors import ConfigurationError
from spillway.loading import load_app

if TYPE_CHECKING:
    from granian.server.common import AbstractServer

__all__ = ["APP_ENV", "HTTP1_BUFFER", "build", "serve", "server"]

#: The environment variable that tells granian's workers which application to serve.
APP_ENV = "SPILLWAY_API_APP"

#: The most a connection's read buffer may hold (hyper's default is 408 KiB; it also bounds the
#: request head). A body streaming in grows the buffer to this size, and with 50 concurrent
#: 10 MB uploads those buffers and the chunks cut from them grew the API by 23-34 MB, in
#: granian's allocator, which kept the memory afterwards. At 64 KiB the same uploads grow it by
#: 12-15 MB. Bodies under 64 KiB are read as before; a 900 KB body ~5 % slower.
HTTP1_BUFFER = 64 * 1024


def build() -> FastAPI:
    """Granian's factory: the API of the application named in ``SPILLWAY_API_APP``."""
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
    load_app(app_ref)
    os.environ[APP_ENV] = app_ref
    server("spillway.api.serve:build", host=host, port=port, workers=workers, factory=True).serve()


def server(
    target: str, *, host: str, port: int, workers: int, factory: bool = False
) -> AbstractServer[Any]:
    """The granian server `serve` runs, for any ASGI `target` (the benchmarks' ceiling uses it).

    HTTP/1.1 only, uvloop, no websockets and no access log, and a read buffer of at most
    `HTTP1_BUFFER` per connection. Granian's other options were measured and left at their
    defaults: ``task_impl="rust"`` raised the p99 tenfold, the rloop event loop was no faster,
    and one runtime thread per worker suits two cores.
    """
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings

    return Granian(
        target,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.auto,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(max_buffer_size=HTTP1_BUFFER),
        websockets=False,
        factory=factory,
        log_access=False,
    )
