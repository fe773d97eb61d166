"""The clock inside a worker: each benchmark task reports its start and end here.

Every library runs the same probe, so "first to last completion" means the same thing for all:
the time between handler returns in the worker process, with no extra Redis round trip per task.
When the target count is reached the probe writes its figures to ``BENCH_PROBE_FILE``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

__all__ = ["Probe"]


class Probe:
    """Counts finished tasks (thread-safe) and writes first start, first and last end."""

    def __init__(self, path: str | None, target: int) -> None:
        self.path = Path(path) if path else None
        self.target = target
        self.first_start: float | None = None
        self.first_end: float | None = None
        self.count = 0
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Probe:
        return cls(
            os.environ.get("BENCH_PROBE_FILE"), int(os.environ.get("BENCH_PROBE_TARGET", "0"))
        )

    def begin(self) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter()

    def end(self) -> None:
        now = time.perf_counter()
        with self._lock:
            self.count += 1
            if self.first_end is None:
                self.first_end = now
                if self.first_start is None:
                    self.first_start = now
            if self.count == self.target:
                self._write(now)

    def _write(self, last_end: float) -> None:
        if self.path is None:
            return
        figures = {
            "count": self.count,
            "first_start": self.first_start,
            "first_end": self.first_end,
            "last_end": last_end,
            "pid": os.getpid(),
        }
        partial = self.path.with_suffix(".part")
        partial.write_text(json.dumps(figures))
        partial.replace(self.path)  # atomic: the runner never reads half a file
