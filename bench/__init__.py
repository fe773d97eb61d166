"""Benchmarks, one module per measurement; `python -m bench.run [NAME...]` runs them.

Each benchmark module has a ``run() -> Report`` that starts what it needs (a throw-away Redis,
worker processes), measures, checks that nothing was lost, stops every process it started by
PID, and returns the section it writes into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DOC", "ROOT", "Report", "machine", "standalone", "update_section"]

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True, slots=True)
class Report:
    """One benchmark's result: a section of docs/benchmarks.md and a line for the terminal."""

    title: str
    summary: str
    markdown: str


def machine(redis_server: str | None = None) -> str:
    """The date and machine a figure was measured on, as one Markdown line."""
    parts = [
        f"{os.cpu_count()} CPUs (nproc)",
        f"{platform.system()} {platform.machine()}",
        f"Python {platform.python_version()}",
    ]
    if redis_server:
        done = subprocess.run(  # noqa: S603 - a server binary we found ourselves
            [redis_server, "--version"], capture_output=True, text=True, check=False
        )
        version = re.search(r"v=(\S+)", done.stdout)
        name = Path(redis_server).name
        parts.append(f"{name} {version[1] if version else '(unknown version)'}")
    return f"{datetime.date.today().isoformat()}, {', '.join(parts)}"


def update_section(title: str, body: str, path: Path = DOC) -> None:
    """Replace the ``## title`` section of the benchmarks page (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by `make bench`.\n"
    section = f"## {title}\n\n{body.strip()}\n"
    # A section ends at the next heading of its level or at a marker comment another writer uses.
    pattern = re.compile(
        rf"^## {re.escape(title)}\n.*?(?=^## |^<!-- |\Z)", re.MULTILINE | re.DOTALL
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def standalone(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Report],
    argv: list[str] | None,
) -> int:
    """What `python -m bench.NAME` does: run, print the summary, update its section."""
    args = parser.parse_args(argv)
    report = run(args)
    print(report.summary)
    if not args.no_write:
        update_section(report.title, report.markdown)
        print(f"updated the {report.title!r} section of {DOC}")
    return 0
