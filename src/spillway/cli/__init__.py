"""The ``spillway`` command: run workers, the API or a dev stack, and look after the queues.

Settings come from ``SPILLWAY_*`` environment variables, read by each `Spillway()`; the CLI
never changes them. Expected errors (Redis down, a bad APP reference, an unknown task id) print
one red line and exit 1, or 78 for configuration errors, which a supervisor does not retry.
"""

from __future__ import annotations

from spillway.cli import control, operate, run
from spillway.cli.base import main
from spillway.loading import AppNotFound, load_app

__all__ = ["AppNotFound", "control", "load_app", "main", "operate", "run"]
