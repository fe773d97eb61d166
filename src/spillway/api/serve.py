"""`serve`: run the HTTP API of a Spillway application under granian (what `spillway api` does).

Granian starts its worker processes on its own, so each one builds the application from a
factory here, which imports the application named in ``SPILLWAY_API_APP``.
"""

from __future__ import annotations

import importlib
import os
import sys

from fastapi import FastAPI

from spillway.app import Spillway
from spillway.errors import ConfigurationError

__all__ = ["APP_ENV", "build", "load_app", "serve"]

#: The environment variable that tells granian's workers which application to serve.
APP_ENV = "SPILLWAY_API_APP"


def load_app(app_ref: str) -> Spillway:
    """The `Spillway` instance named by ``module:attribute`` (the module may be in the cwd)."""
    module_name, _, attribute = app_ref.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"{app_ref!r}: name the application as module:attribute")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"{app_ref!r}: cannot import {module_name!r}: {exc}") from exc
    target = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(f"{app_ref!r}: {module_name} has no {attribute!r}") from None
    if not isinstance(target, Spillway):
        raise ConfigurationError(f"{app_ref!r} is a {type(target).__name__}, not a Spillway app")
    return target


def build() -> FastAPI:
    """Granian's factory: the API of the application named in ``SPILLWAY_API_APP``."""
    from spillway.api.app import create_app

    app_ref = os.environ.get(APP_ENV)
    if not app_ref:
        raise ConfigurationError(f"{APP_ENV} is not set; start the API with `spillway api APP`")
    return create_app(load_app(app_ref))


def serve(app_ref: str, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve the API of ``module:attribute`` until SIGTERM or SIGINT, then return.

    The application is imported once here first, so a wrong reference fails at once with a
    clear message instead of inside every worker.
    """
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    load_app(app_ref)
    os.environ[APP_ENV] = app_ref
    Granian(
        "spillway.api.serve:build",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.auto,
        http=HTTPModes.http1,
        websockets=False,
        factory=True,
        log_access=False,
    ).serve()
