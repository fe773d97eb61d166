"""Run child processes, restart the ones that crash, and stop them all on SIGTERM/SIGINT.

`spillway worker --processes P` runs P copies of ``spillway worker ... --processes 1``;
`spillway dev` runs the API and one worker. Both go through :class:`Supervisor`:

* a child that exits non-zero or dies from a signal is restarted after an exponential backoff
  (the backoff resets once a child has stayed up for a while);
* a child exiting with :data:`EXIT_CONFIG` has a configuration error that a restart cannot fix,
  so the supervisor stops everything and exits with that code;
* a child exiting 0 has finished (a burst worker that drained its queues) and is not restarted;
  the supervisor exits 0 once every child has finished;
* SIGTERM or SIGINT is forwarded to every child as SIGTERM, then the supervisor waits for them
  (SIGKILL after `stop_timeout` seconds, or at once on a second signal) and exits 0.

Each child runs in its own process group, so the signal reaches the processes it started too
(an HTTP server's own workers), and a Ctrl-C in the terminal reaches only the supervisor, which
decides the order of shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

__all__ = ["EXIT_CONFIG", "Supervisor", "stop_process"]

log = logging.getLogger("spillway.supervisor")

EXIT_CONFIG = 78
"""Exit code of a child whose configuration is wrong (``EX_CONFIG`` of sysexits.h)."""

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


@dataclass(slots=True)
class _Child:
    slot: int
    command: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    finished: bool = False


@dataclass
class Supervisor:
    """Keeps one child process running per command until told to stop (or they all finish)."""

    commands: Sequence[Sequence[str]]
    env: Mapping[str, str] | None = None
    stop_timeout: float = 30.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    healthy_after: float = 10.0
    _children: list[_Child] = field(default_factory=list, init=False)
    _wakeup: tuple[int, int] | None = field(default=None, init=False)
    _previous_fd: int = field(default=-1, init=False)
    _previous: dict[int, object] = field(default_factory=dict, init=False)
    _stopping: float | None = field(default=None, init=False)  # the SIGKILL deadline
    _exit_code: int = field(default=0, init=False)

    @property
    def pids(self) -> list[int]:
        """PIDs of the children running now."""
        return [c.process.pid for c in self._children if c.process and c.process.poll() is None]

    def start(self) -> None:
        """Install the signal handlers and start every child (call from the main thread)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._wakeup = (read_fd, write_fd)
        # The C-level handler writes each signal's number to the pipe; `wait` reads them there.
        self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, _ignore)
        self._children = [_Child(i, list(cmd)) for i, cmd in enumerate(self.commands)]
        for child in self._children:
            self._spawn(child)

    def wait(self) -> int:
        """Supervise until stopped or finished; returns the exit code for the supervisor."""
        try:
            while True:
                received = self._wait_for_event()
                if signal.SIGTERM in received or signal.SIGINT in received:
                    self.stop(force=self._stopping is not None)
                self._reap()
                if all(
                    c.process is None and (c.finished or self._stopping) for c in self._children
                ):
                    return self._exit_code
                if self._stopping is not None and time.monotonic() >= self._stopping:
                    log.warning("children still running after %gs: killing", self.stop_timeout)
                    self._signal_all(signal.SIGKILL)
                    self._stopping = float("inf")
                self._restart_due()
        finally:
            self._restore()

    def run(self) -> int:
        """`start` then `wait`."""
        self.start()
        return self.wait()

    def stop(self, *, force: bool = False) -> None:
        """Ask every child to stop (SIGTERM), or kill them (`force`)."""
        if self._stopping is None:
            log.info("stopping %d children", len(self.pids))
            self._stopping = time.monotonic() + self.stop_timeout
        for child in self._children:
            child.restart_at = None
        self._signal_all(signal.SIGKILL if force else signal.SIGTERM)

    # --- internals ---------------------------------------------------------------------------

    def _spawn(self, child: _Child) -> None:
        child.restart_at = None
        child.started = time.monotonic()
        child.process = subprocess.Popen(  # noqa: S603 - our own argument list, no shell
            child.command,
            env=dict(self.env) if self.env is not None else None,
            process_group=0,
        )
        log.info("started child %d (pid %d)", child.slot, child.process.pid)

    def _wait_for_event(self) -> set[int]:
        assert self._wakeup is not None  # noqa: S101 - start() ran
        now = time.monotonic()
        deadlines = [c.restart_at for c in self._children if c.restart_at is not None]
        if self._stopping is not None and self._stopping != float("inf"):
            deadlines.append(self._stopping)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        # Children may have exited before the handler was installed: never block on the pipe
        # while one of them is waiting to be reaped.
        if any(c.process is not None and c.process.poll() is not None for c in self._children):
            timeout = 0.0
        with contextlib.suppress(InterruptedError):
            select.select([self._wakeup[0]], [], [], timeout)
        try:
            return set(os.read(self._wakeup[0], 4096))
        except BlockingIOError:
            return set()

    def _reap(self) -> None:
        for child in self._children:
            if child.process is None or (code := child.process.poll()) is None:
                continue
            pid, child.process = child.process.pid, None
            if self._stopping is not None:
                log.info("child %d (pid %d) %s", child.slot, pid, _describe(code))
            elif code == 0:
                log.info("child %d (pid %d) finished", child.slot, pid)
                child.finished = True
            elif code == EXIT_CONFIG:
                log.error("child %d (pid %d) has a configuration error: stopping", child.slot, pid)
                self._exit_code = EXIT_CONFIG
                self.stop()
            else:
                if time.monotonic() - child.started >= self.healthy_after:
                    child.failures = 0
                delay = min(self.backoff_cap, self.backoff_base * 2**child.failures)
                child.failures += 1
                child.restart_at = time.monotonic() + delay
                log.warning(
                    "child %d (pid %d) %s: restarting in %.1fs",
                    child.slot, pid, _describe(code), delay,
                )  # fmt: skip

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self._children:
            if child.restart_at is not None and child.restart_at <= now:
                self._spawn(child)

    def _signal_all(self, sig: int) -> None:
        for child in self._children:
            if child.process is not None and child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.process.pid, sig)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]  # what signal.signal returned
        self._previous.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_fd)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Stop one child (and its process group when it leads one): SIGTERM, then SIGKILL."""
    if process.poll() is None:
        group = os.getpgid(process.pid) == process.pid
        kill = os.killpg if group else os.kill
        with contextlib.suppress(ProcessLookupError):
            kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                kill(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Python-level handler: the work is done by reading the wakeup pipe."""
