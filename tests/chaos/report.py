"""The results table: one row per scenario run, printed at the end of the session."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.chaos.checker import Verdict

__all__ = ["ROWS", "record", "table"]

ROWS: list[dict[str, Any]] = []
#: When set, each row is also appended to this file as one JSON line (for docs/reliability.md).
REPORT_ENV = "SPILLWAY_CHAOS_REPORT"


def record(verdict: Verdict) -> None:
    """Keep the row for the summary table (before asserting, so failures are listed too)."""
    row = verdict.row()
    ROWS.append(row)
    path = os.environ.get(REPORT_ENV)
    if path:
        with Path(path).open("a") as out:
            out.write(json.dumps(row) + "\n")


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows."""
    head = (
        "| scenario | size | tasks | faults injected | lost | duplicates | worst latency | result |"
    )
    lines = [head, "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['size']} | {r['tasks']:,} | {r['faults']} | {r['lost']} "
            f"| {r['duplicates']} | {r['worst_latency_ms']:,} ms | {r['result']} |"
        )
    return "\n".join(lines)
