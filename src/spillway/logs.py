"""Logging for the command line: one line per event, as text for people or JSON for machines."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

__all__ = ["JSONFormatter", "LogFormat", "setup_logging"]

LogFormat = Literal["text", "json"]

_TEXT = "%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, extras and exception."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in event:
                event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(event, default=str).decode()


class _StderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at the time of the event (it may be swapped)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def setup_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    """Send every log event to stderr, one line each, replacing an earlier setup of ours."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        formatter = logging.Formatter(_TEXT)
        formatter.default_msec_format = "%s.%03d"
        handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level.upper())
