"""Start and stop worker processes for tests, always by PID and always bounded in time."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from spillway import Settings

ROOT = Path(__file__).resolve().parent.parent


class Proc(subprocess.Popen[bytes]):
    """A child process whose output goes to a temporary file (a pipe could fill and block it)."""

    log_path: Path


def spawn_worker(env: dict[str, str], *args: str, app: str = "tests.apps.core:app") -> Proc:
    """`spillway worker APP ARGS...` as a child process."""
    return spawn(env, "worker", app, *args)


def spawn(env: dict[str, str], *args: str) -> Proc:
    """`python -m spillway ARGS...` as a child process."""
    fd, name = tempfile.mkstemp(prefix="spillway-test-", suffix=".log")
    try:
        proc = Proc(
            [sys.executable, "-m", "spillway", *args],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
        )
    finally:
        os.close(fd)
    proc.log_path = Path(name)
    atexit.register(proc.log_path.unlink, missing_ok=True)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL: the process gets no chance to clean up."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def output(proc: Proc) -> str:
    """Everything the process printed so far."""
    return proc.log_path.read_text(errors="replace")


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as the ``SPILLWAY_*`` variables a child process reads (list settings
    comma-separated, as users write them; API keys are left to each test)."""
    env = {}
    keys = {"api_keys", "admin_keys"}
    for name, value in settings.model_dump(exclude_none=True, exclude=keys).items():
        env[f"SPILLWAY_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    return env
