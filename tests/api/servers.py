"""Real API servers for the tests: `spillway.api.serve` in a child process, on a free port.

Each server serves `tests.api.server_app:app` with its own key prefix; a test that needs tasks to
run builds the same application in-process (`ApiServer.spillway`) and drains it with a
worker (`drain`).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from tests.api.sample_app import build

from spillway import Settings, Spillway, Worker
from spillway.api.serve import server as configure

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1

_SERVE = (
    "import sys; from spillway.api import serve; serve(sys.argv[1], host='127.0.0.1', "
    "port=int(sys.argv[2]), workers=int(sys.argv[3]))"
)


def _die_with_parent() -> None:
    # If the test session is killed outright, its servers must not outlive it (Linux only).
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ApiServer:
    """A `spillway api` process serving the sample application."""

    redis_url: str
    env: dict[str, str] = field(default_factory=dict)
    app_ref: str = "tests.api.server_app:app"
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    workers: int = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        """The settings the server runs with, for an in-process twin of its application."""
        # A short block keeps the in-process workers quick to stop.
        return Settings(redis_url=self.redis_url, prefix=self.prefix, block_ms=50)

    def spillway(self) -> Spillway:
        """The server's application, built in this process (to run workers, inspect Redis)."""
        app: Spillway = build(self.settings)
        return app

    def start(self, log_dir: Path, *, wait: bool = True) -> ApiServer:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SPILLWAY_REDIS_URL": self.redis_url,
            "SPILLWAY_PREFIX": self.prefix,
            "SPILLWAY_DEFAULT_TASK_TYPE": "resize",
            **self.env,
        }
        self.log_path = log_dir / f"api-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter, no shell
                [sys.executable, "-c", _SERVE, self.app_ref, str(self.port), str(self.workers)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        if wait:
            self._wait_until_healthy()
        return self

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=self.url, timeout=1.0) as client:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"API server exited: {self.log()}")
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"API server did not start: {self.log()}")
                time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> int | None:
        """SIGTERM the server and return its exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode


def _serve(redis_url: str, tmp: Path, env: dict[str, str] | None = None) -> Iterator[ApiServer]:
    server = ApiServer(redis_url, env or {}).start(tmp)
    try:
        yield server
    finally:
        server.stop()


def serving(redis_url: str, tmp: Path, env: dict[str, str] | None = None) -> Iterator[ApiServer]:
    """Run a server for the duration of a fixture."""
    server = ApiServer(redis_url, env or {}).start(tmp)
    try:
        yield server
    finally:
        server.stop()


async def drain(app: Spillway, *task_ids: str, timeout: float = 20.0) -> None:
    """Run a worker of `app` until these tasks are finished (woken by their completion).

    Without ids, run until every queue is empty, delayed tasks included (burst mode).
    """
    if not task_ids:
        await Worker(app, burst=True).run()
        return
    worker = Worker(app)
    running = asyncio.create_task(worker.run())
    try:
        for task_id in task_ids:
            await app.wait(task_id, timeout)
    finally:
        worker.stop()
        await running


@asynccontextmanager
async def in_process(
    app: Any,
    *,
    head_timeout: float,
    body_timeout: float,
    keep_alive: int = 5,
    fast_path: bool | None = None,
) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """`app` served in this event loop by uvicorn on a free port, configured as
    `spillway.api.serve.server` configures it (its fast protocol, unless SPILLWAY_FAST_PATH=0
    or its probe fails; `fast_path` overrides the environment).

    For tests of the protocol itself with an application that records what it saw. The
    socket is listening before the server starts: connections wait in its backlog.
    """
    settings = Settings(head_timeout=head_timeout, body_timeout=body_timeout)
    if fast_path is not None:
        settings = settings.model_copy(update={"fast_path": fast_path})
    config = configure(
        app,
        host="127.0.0.1",
        port=0,
        workers=1,
        settings=settings,
        timeout_keep_alive=keep_alive,
        lifespan="off",
        timeout_graceful_shutdown=5,
    ).config
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
