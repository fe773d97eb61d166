"""prometheus-client's multiprocess mode, for a directory chosen after it was imported: the only
module that touches prometheus-client's internals.

prometheus-client decides once, when `prometheus_client.values` is imported, whether metric
values live in the process's memory or in files under ``PROMETHEUS_MULTIPROC_DIR``: it sets
the private module attribute `values.ValueClass` from `values.get_value_class()`, which reads
the environment. `spillway api --workers N`, `spillway worker --processes P` and `spillway dev`
choose a private directory when they start (`spillway.metrics.private_multiproc_dir`), after
that import; `follow_environment` sets the attribute again before the metrics are created.

What this relies on (`NEEDS`, checked by `probe`): `prometheus_client.values.ValueClass`
exists, and `prometheus_client.values.get_value_class` takes no arguments.

Without them (or with SPILLWAY_FAST_PATH off) the public multiprocess mode is what works: the
directory is in the environment when a process starts. That holds for every process that
records, as the CLI sets the directory and then starts them (its own subprocesses, uvicorn's
spawned workers) with it in their environment. A process whose directory changed after the
import keeps its own values in memory: one warning says so.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import logging
import os

from prometheus_client import values

__all__ = ["MULTIPROC_ENV", "NEEDS", "follow_environment", "probe"]

log = logging.getLogger("spillway.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The directory prometheus-client chose its value class for (it was imported just before).
_DIR_AT_IMPORT = os.environ.get(MULTIPROC_ENV)

#: (module, attribute) pairs the fast path uses.
NEEDS: tuple[tuple[str, str], ...] = (
    ("prometheus_client.values", "ValueClass"),
    ("prometheus_client.values", "get_value_class"),
)


def probe(needs: tuple[tuple[str, str], ...] | None = None) -> str | None:
    """Why the installed prometheus-client lacks what `follow_environment` uses (`needs`, by
    default `NEEDS`), or None. Checked once per list."""
    return _probe(NEEDS if needs is None else needs)


@functools.cache
def _probe(needs: tuple[tuple[str, str], ...]) -> str | None:
    for module_name, attr in needs:
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            return f"{module_name}.{attr} is missing"
        if attr == "get_value_class":
            try:
                inspect.signature(found).bind()
            except (TypeError, ValueError):
                return f"{module_name}.{attr} does not take zero arguments"
    return None


def follow_environment(*, fast: bool) -> None:
    """Make the metrics created from now on keep their values where ``PROMETHEUS_MULTIPROC_DIR``
    says now (in files there, or in memory when it is unset)."""
    if fast:
        problem = probe()
        if problem is None:
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
            return
        log.warning(
            "prometheus-client %s: %s; metrics follow %s as it was when it was imported",
            _version(),
            problem,
            MULTIPROC_ENV,
        )
    if os.environ.get(MULTIPROC_ENV) != _DIR_AT_IMPORT:
        log.warning(
            "%s changed after prometheus_client was imported, and the fast path is off or "
            "unavailable: this process's metrics stay in its memory; set it before it starts",
            MULTIPROC_ENV,
        )


def _version() -> str:
    try:
        return importlib.metadata.version("prometheus-client")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
