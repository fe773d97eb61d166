"""Run the ``spillway`` command for tests: in-process for quick commands, as a child otherwise."""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
from click.testing import CliRunner, Result
from tests.procs import settings_env

from spillway import Settings
from spillway.cli import main

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.basic:app"


def settings(redis_url: str, prefix: str) -> Settings:
    """Short timings, so reclaim and shutdown take a second or two at most."""
    return Settings(
        redis_url=redis_url,
        prefix=prefix,
        visibility_timeout=1.0,
        heartbeat_interval=0.5,
        block_ms=100,
        shutdown_grace=5.0,
    )


def child_env(settings: Settings | None) -> dict[str, str]:
    """This process's environment, minus any SPILLWAY_* of its own, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
    env["PYTHONPATH"] = str(ROOT)
    if settings is not None:
        env |= settings_env(settings)
    return env


async def invoke(settings: Settings, *args: str, input: str | None = None) -> Result:
    """`spillway ARGS` in this process, with `settings` instead of the environment.

    Runs in a thread: the commands start their own event loop.
    """
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, list(args), input=input, obj=settings)


def spawn(settings: Settings | None, *args: str) -> subprocess.Popen[str]:
    """`python -m spillway ARGS` as a child, stdout and stderr merged into one pipe."""
    return subprocess.Popen(  # noqa: S603 - our own argument list, no shell
        [sys.executable, "-m", "spillway", *args],
        env=child_env(settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def finish(proc: subprocess.Popen[str], timeout: float = 30.0) -> tuple[int, str]:
    """Wait for a child to exit on its own (killing it after `timeout`); (code, output)."""
    try:
        out, _ = await asyncio.to_thread(proc.communicate, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"still running after {timeout}s:\n{out}") from None
    return proc.returncode, out


async def terminate(proc: subprocess.Popen[str], timeout: float = 30.0) -> tuple[int, str]:
    """SIGTERM a child and wait for it; (code, output)."""
    proc.send_signal(signal.SIGTERM)
    return await finish(proc, timeout)


class Lines:
    """Reads a child's output in a thread so a test can wait for one line without blocking."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stream = proc.stdout
        self._thread = threading.Thread(target=self._pump, args=(self._stream,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Once the child has exited: collect the rest of its output and close the pipe."""
        self._thread.join(10)
        self._stream.close()
        while (line := self._queue.get_nowait() if not self._queue.empty() else None) is not None:
            self.seen.append(line)

    def _pump(self, stream: Iterator[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    async def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """The first line containing `text`; fails after `timeout` or when output ends."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = await asyncio.to_thread(self._queue.get, timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in:\n{''.join(self.seen)}")


async def until(
    check: Callable[[], object | Awaitable[object]], timeout: float = 20.0, what: str = ""
) -> None:
    """Poll `check` (every 50 ms) until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await _value(check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


async def _value(result: object | Awaitable[object]) -> object:
    return await result if inspect.isawaitable(result) else result


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def command_line(proc: psutil.Process) -> str:
    """The process's command line, or "" once it has ended (a process can turn zombie between
    any two looks at it: psutil then raises ZombieProcess, a NoSuchProcess)."""
    try:
        return " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return ""


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The ones still running (zombies count as gone)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Kill the child's process tree on the way out if the test left it running."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            for p in [*descendants(proc.pid), psutil.Process(proc.pid)]:
                with suppress(psutil.NoSuchProcess):
                    p.kill()
            proc.communicate()
