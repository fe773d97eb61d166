"""Find the application a command names: ``module:attribute``, importable from the cwd."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from spillway.app import Spillway
from spillway.errors import ConfigurationError

__all__ = ["EXAMPLE_APP", "AppNotFound", "load_app"]

EXAMPLE_APP = "spillway.example:app"


class AppNotFound(ConfigurationError):
    """The APP reference does not name a `Spillway` instance."""


def load_app(ref: str) -> Spillway:
    """Import ``module:attribute`` (the current directory first on sys.path, as uvicorn does)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise AppNotFound(
            f"APP must look like 'module:attribute' (e.g. {EXAMPLE_APP}), not {ref!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppNotFound(
                f"cannot import module {module_name!r} (looked in {os.getcwd()} and sys.path)"
            ) from exc
        raise AppNotFound(f"importing {module_name!r} failed: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppNotFound(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Spillway):
        raise AppNotFound(f"{ref} is a {type(obj).__name__}, not a Spillway application")
    return obj
