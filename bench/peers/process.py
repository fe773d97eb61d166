"""Child processes the suite starts: bounded in time, and stopped by their PID when done.

Every child gets its own session, so its process group id is its PID: stopping it signals that
group, which also reaches what a worker CLI forked (taskiq's and Dramatiq's worker children).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["Failed", "WorkerProcess", "leftover_processes", "produce"]

STOP_GRACE = 10.0
_started: list[int] = []


class Failed(Exception):
    """A run that produced no figure: timed out, or a child failed. The message is reported."""


def produce(
    peer: str, mode: str, workload: str, n: int, env: Mapping[str, str], timeout: float
) -> dict[str, Any]:
    """Run ``python -m bench.peers.produce`` once and return its JSON line."""
    command = [sys.executable, "-m", "bench.peers.produce", peer, mode, workload, str(n)]
    # Our own interpreter and module, no shell.
    child = subprocess.Popen(  # noqa: S603
        command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, start_new_session=True, text=True,
    )  # fmt: skip
    _started.append(child.pid)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(child)
        raise Failed(f"timeout ({timeout:g} s enqueueing)") from None
    finally:
        _stop_group(child)
    if child.returncode != 0:
        last = err.strip().splitlines()[-1:] or ["no output"]
        raise Failed(f"{mode} enqueue failed: {last[0][:200]}")
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return figures


class WorkerProcess:
    """A peer's own worker CLI, started in its own session with its output in a log file."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.log = log
        self._child: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        with self.log.open("ab") as out:
            # The peer's documented CLI from our venv, as an argument list.
            self._child = subprocess.Popen(  # noqa: S603
                self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        _started.append(self._child.pid)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._child is not None:
            _stop_group(self._child)

    def wait_for(self, probe: Path, timeout: float) -> dict[str, Any]:
        """The probe's figures once the worker has finished the target number of tasks."""
        deadline = time.monotonic() + timeout
        while not probe.exists():
            if self._child is not None and self._child.poll() is not None and not probe.exists():
                raise Failed(f"worker exited with code {self._child.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise Failed(f"timeout ({timeout:g} s)")
            time.sleep(0.02)
        figures: dict[str, Any] = json.loads(probe.read_text())
        return figures

    def wait_exit(self, timeout: float) -> bool:
        """Whether the worker exited on its own (burst mode) within `timeout` seconds."""
        if self._child is None:
            return False
        try:
            self._child.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])[:300]


def _stop_group(child: subprocess.Popen[Any]) -> None:
    """SIGTERM the child's process group, SIGKILL it after a grace period, reap the child."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(STOP_GRACE)
    # Whatever is left in the group (the leader, or children it forked) is killed outright.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def leftover_processes() -> list[int]:
    """PIDs still alive in any process group this suite started (there should be none)."""
    groups = set(_started)
    alive: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone while we looked
        # After "pid (comm)": state, ppid, pgrp. Zombies are reaped children's leftovers: skip.
        if fields[0] != "Z" and int(fields[2]) in groups:
            alive.append(int(stat.parent.name))
    return alive
