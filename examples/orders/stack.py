"""Run the example's processes: the two front doors and a Spillway worker, each a child process
on a free loopback port, stopped by its PID. Used by ``python -m examples.orders``, the
example's test and the story benchmark.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

__all__ = ["Stack", "StackError"]

ROOT = Path(__file__).resolve().parents[2]
APP = "examples.orders.tasks:app"
SYNC_APP = "examples.orders.sync_api:app"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class StackError(RuntimeError):
    """A process of the example did not start."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Stack:
    """The example's processes against one PostgreSQL (`pg_url`) and one Redis (`redis_url`).

    Start what a run needs (:meth:`spillway_api`, :meth:`worker`, :meth:`sync_api`); leaving the
    block stops each process by its PID, the last started first.
    """

    pg_url: str
    redis_url: str
    log_dir: Path  # each process's output, in NAME.log
    prefix: str = field(default_factory=lambda: f"orders-{uuid.uuid4().hex[:8]}")
    db_concurrency: int = 20  # the task's fleet-wide limit, and each worker's pool size
    pool_size: int = 20  # the synchronous design's pool, per server process
    pool_timeout: float = 30.0
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """The environment of every child: the example's settings and Spillway's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
        path = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return env | {
            "PYTHONPATH": path,
            "ORDERS_DATABASE_URL": self.pg_url,
            "ORDERS_DB_CONCURRENCY": str(self.db_concurrency),
            "ORDERS_POOL_SIZE": str(self.pool_size),
            "ORDERS_POOL_TIMEOUT": str(self.pool_timeout),
            "SPILLWAY_REDIS_URL": self.redis_url,
            "SPILLWAY_PREFIX": self.prefix,
            "SPILLWAY_DEFAULT_TASK_TYPE": "place_order",
        }

    def spillway_api(self, *, workers: int = 1) -> str:
        """`spillway api` serving ``POST /process``; its base URL once healthy."""
        port = _free_port()
        argv = ["-m", "spillway", "api", APP, "--port", str(port), "--workers", str(workers)]
        self._start("spillway-api", [*argv, "--log-level", "warning"])
        return self._healthy("spillway-api", port)

    def sync_api(self, *, workers: int = 1) -> str:
        """uvicorn serving the synchronous design, the usual way; its base URL once healthy."""
        port = _free_port()
        argv = ["-m", "uvicorn", SYNC_APP, "--port", str(port), "--workers", str(workers)]
        self._start("sync-api", [*argv, "--log-level", "warning", "--no-access-log"])
        return self._healthy("sync-api", port)

    def worker(self, *, processes: int = 1, concurrency: int = 100) -> None:
        """`spillway worker` for the example's tasks."""
        argv = ["-m", "spillway", "worker", APP, "--processes", str(processes)]
        self._start("worker", [*argv, "--concurrency", str(concurrency), "--log-level", "warning"])

    def pids(self) -> dict[str, int]:
        """Each running process's PID, by name."""
        return {name: proc.pid for name, proc in self._procs if proc.poll() is None}

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM each process (the last started first), SIGKILL it after STOP_TIMEOUT."""
        while self._procs:
            _, proc = self._procs.pop()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _start(self, name: str, argv: list[str]) -> None:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and argv, no shell
                [sys.executable, *argv],
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._procs.append((name, proc))

    def _healthy(self, name: str, port: int) -> str:
        url = f"http://127.0.0.1:{port}"
        proc = next(p for n, p in reversed(self._procs) if n == name)
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=url, timeout=1.0) as client:
            while True:
                if proc.poll() is not None:
                    raise StackError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
                try:
                    if client.get("/healthz").status_code == 200:
                        return url
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise StackError(f"{name} did not start:\n{self.log(name)}")
                time.sleep(0.05)
