"""Real processes for the chaos scenarios: Redis, API servers and workers, stopped by PID.

Every child runs in its own session, so `kill -9` of an API reaches the HTTP server processes
it started too, and nothing is left listening. `Stack.close` stops whatever is still running
(SIGTERM, then SIGKILL after a bound), on success and on failure alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from tests.clients import ready_client
from tests.embedded_cluster import EmbeddedCluster
from tests.procs import settings_env

from spillway import Settings, Spillway
from spillway.broker import GROUP
from spillway.embedded import EmbeddedRedis
from spillway.records import TERMINAL

__all__ = ["APP", "Child", "Stack", "free_port"]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.chaos.app:app"
START_TIMEOUT = 45.0  # a loaded 2-core machine imports the HTTP stack slowly
STOP_TIMEOUT = 15.0

#: Quick recovery timings; scenarios override some of them.
BASE_SETTINGS: dict[str, Any] = {
    "visibility_timeout": 2.0,
    "block_ms": 200,
    "heartbeat_interval": 0.5,
    "redis_timeout": 0.5,
    "retry_base": 0.05,
    "retry_cap": 0.2,
    "shutdown_grace": 3.0,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Child:
    """One child process in its own session, its output in a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter, no shell
                argv,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the child's process group (the child and whatever it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the group, SIGKILL after `timeout`; the child's exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        # A group member that outlived its leader (it should not) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class Stack:
    """Redis (AOF everysec), API servers and workers for one scenario, under one key prefix.

    With `cluster` (default: under `make test-cluster`, unless the scenario needs a server of its
    own to fill), Redis is a local cluster of three primaries with a replica each, and the
    queues are split over three shards (SPILLWAY_TEST_SHARDS).
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        settings: dict[str, Any] | None = None,
        redis_url: str | None = None,
        maxmemory: str | None = None,
        env: dict[str, str] | None = None,
        cluster: bool | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.prefix = f"c{uuid.uuid4().hex[:8]}"
        self.redis: EmbeddedRedis | None = None
        self.cluster: EmbeddedCluster | None = None
        self._redis_url = redis_url
        self._maxmemory = maxmemory
        if cluster is None:
            wanted = os.environ.get("SPILLWAY_TEST_CLUSTER") == "1"
            cluster = wanted and redis_url is None and maxmemory is None
        self._cluster = cluster
        shards = int(os.environ.get("SPILLWAY_TEST_SHARDS", "3")) if cluster else 1
        self._settings = {**BASE_SETTINGS, "shards": shards, **(settings or {})}
        self._extra_env = env or {}
        self.children: list[Child] = []
        self.apis: dict[int, Child] = {}  # port -> server
        self.workers: list[Child] = []
        self._names = 0
        self.app: Spillway | None = None
        self.client: aioredis.Redis | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Stack:
        if self._cluster:
            self.cluster = EmbeddedCluster(primaries=3, replicas=1, appendonly=True)
            await asyncio.to_thread(self.cluster.start)
        elif self._redis_url is None:
            self.redis = EmbeddedRedis(appendonly=True, maxmemory=self._maxmemory).start()
        self.app = _chaos_app(self.settings)
        self.client = await ready_client(self.url, timeout=5, max_connections=16)
        return self

    async def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        if self.app is not None:
            await self.app.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                if isinstance(self.client, aioredis.Redis):
                    await self.client.aclose(close_connection_pool=True)
                else:
                    await self.client.aclose()
        if self.redis is not None:
            self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop()

    async def __aenter__(self) -> Stack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        if self._redis_url is not None:
            return self._redis_url
        if self.cluster is not None:
            return self.cluster.url
        assert self.redis is not None
        return self.redis.url

    @property
    def settings(self) -> Settings:
        return Settings(redis_url=self.url, prefix=self.prefix, **self._settings)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """This process's environment without its SPILLWAY_*, plus the scenario's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
        inherited = os.environ.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{inherited}" if inherited else str(ROOT)
        env |= settings_env(self.settings)
        return {**env, **self._extra_env, **(extra or {})}

    def _spawn(self, kind: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        self._names += 1
        argv = [sys.executable, "-m", "spillway", *args]
        child = Child(f"{kind}-{self._names}", argv, self.env(env), self.log_dir)
        self.children.append(child)
        return child

    # --- API servers -----------------------------------------------------------------------

    def start_api(self, port: int | None = None, env: dict[str, str] | None = None) -> Child:
        """`spillway api` on a free port (or `port`); returns at once, see `wait_api`."""
        port = port or free_port()
        args = ["api", APP, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        child = self._spawn("api", args, env)
        self.apis[port] = child
        return child

    def api_url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    async def wait_api(self, port: int, timeout: float = START_TIMEOUT) -> None:
        child = self.apis[port]
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.api_url(port), timeout=1.0) as http:
            while True:
                if not child.alive:
                    raise RuntimeError(f"API {child.name} exited:\n{child.output()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"API {child.name} did not start:\n{child.output()}")
                await asyncio.sleep(0.05)

    async def restart_api(self, port: int) -> None:
        """Start the server of `port` again (after a kill) and wait until it answers."""
        self.start_api(port)
        await self.wait_api(port)

    # --- workers ---------------------------------------------------------------------------

    def start_worker(self, concurrency: int = 8, env: dict[str, str] | None = None) -> Child:
        args = ["worker", APP, "--concurrency", str(concurrency), "--log-level", "warning"]
        child = self._spawn("worker", args, env)
        self.workers.append(child)
        return child

    async def wait_workers(self, children: Iterable[Child], timeout: float = START_TIMEOUT) -> None:
        """Wait until each child has registered (its first heartbeat is written on start)."""
        pids = {str(c.pid): c for c in children}
        deadline = time.monotonic() + timeout
        while True:
            names = [
                str(n) for n in await self.redis_client.zrange(f"{self.prefix}:workers", 0, -1)
            ]
            seen = {n.split(":")[-2] for n in names}
            missing = [c for pid, c in pids.items() if pid not in seen]
            if not missing:
                return
            for c in missing:
                if not c.alive:
                    raise RuntimeError(f"worker {c.name} exited:\n{c.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start: {[c.name for c in missing]}")
            await asyncio.sleep(0.05)

    def live_workers(self) -> list[Child]:
        return [w for w in self.workers if w.alive]

    async def stop_workers(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.live_workers()))

    # --- looking at Redis ------------------------------------------------------------------

    @property
    def redis_client(self) -> aioredis.Redis:
        assert self.client is not None
        return self.client

    def primary_clients(self) -> list[aioredis.Redis]:
        """A plain client of each primary serving now (for SCAN); one client on a single server.

        The caller closes them.
        """
        if self.cluster is None:
            return [aioredis.Redis.from_url(self.url, decode_responses=True)]
        return [
            aioredis.Redis(host="127.0.0.1", port=n.port, decode_responses=True)
            for n in self.cluster.primary_nodes()
        ]

    @property
    def spillway(self) -> Spillway:
        assert self.app is not None
        return self.app

    async def backlog_and_pending(self) -> tuple[int, int]:
        """(stream entries + due tasks, pending deliveries) over every queue and shard."""
        broker = self.spillway.broker
        backlog = pending = 0
        for stream, (queue, shard) in broker.core.streams(self.spillway.lanes()).items():
            keys = broker.keys.shard(shard)
            backlog += int(await self.redis_client.xlen(stream))
            backlog += int(await self.redis_client.zcard(keys.due(queue)))
            with contextlib.suppress(aioredis.ResponseError):
                pending += int((await self.redis_client.xpending(stream, GROUP))["pending"])
        return backlog, pending

    async def statuses(self, task_ids: list[str]) -> list[str | None]:
        keys = self.spillway.broker.keys
        out: list[str | None] = []
        for start in range(0, len(task_ids), 500):
            chunk = task_ids[start : start + 500]
            async with self.redis_client.pipeline(transaction=False) as pipe:
                for task_id in chunk:
                    pipe.hget(keys.for_task(task_id).task(task_id), "status")
                out += [None if s is None else str(s) for s in await pipe.execute()]
        return out

    async def drain(self, task_ids: Iterable[str], timeout: float) -> float:
        """Wait until the backlog and the pending list are empty and each id is terminal.

        Returns the seconds it took; raises AssertionError (with the state) after `timeout`.
        """
        ids = sorted(set(task_ids))
        started = time.monotonic()
        deadline = started + timeout
        terminal = {s.value for s in TERMINAL}
        open_ids = ids
        while True:
            try:
                backlog, pending = await self.backlog_and_pending()
                statuses = await self.statuses(open_ids)
                open_ids = [i for i, s in zip(open_ids, statuses, strict=True) if s not in terminal]
                if backlog == 0 and pending == 0 and not open_ids:
                    return time.monotonic() - started
            except (OSError, aioredis.RedisError):
                backlog = pending = -1  # Redis is restarting; keep waiting
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not drained after {timeout:.0f} s: backlog {backlog}, pending {pending}, "
                    f"{len(open_ids)} tasks not terminal (e.g. {open_ids[:3]}); live workers "
                    f"{len(self.live_workers())}\n{await self.stuck(open_ids[:5])}"
                )
            await asyncio.sleep(0.1)

    async def stuck(self, task_ids: list[str]) -> str:
        """What a drain that timed out left behind: the records of `task_ids`, the pending
        deliveries, and where each live worker's asyncio tasks wait (from their logs)."""
        keys = self.spillway.broker.keys
        lines = []
        with contextlib.suppress(OSError, aioredis.RedisError):
            for task_id in task_ids:
                record = await self.redis_client.hgetall(keys.for_task(task_id).task(task_id))
                shown = {k: v for k, v in record.items() if k not in ("payload", "result")}
                lines.append(f"record {task_id}: {shown}")
            for stream in self.spillway.broker.core.streams(self.spillway.lanes()):
                with contextlib.suppress(aioredis.ResponseError):
                    for p in await self.redis_client.xpending_range(stream, GROUP, "-", "+", 10):
                        lines.append(f"pending in {stream}: {p}")
        marks = {}
        for worker in self.live_workers():
            marks[worker] = worker.log_path.stat().st_size
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGUSR1)
        await asyncio.sleep(1.0)
        for worker, mark in marks.items():
            with worker.log_path.open("rb") as log:
                log.seek(mark)
                dump = log.read().decode(errors="replace")
            lines.append(f"{worker.name}: {dump[-12000:]}")
        return "\n".join(lines)


def _chaos_app(settings: Settings) -> Spillway:
    """The chaos application's task types, under this scenario's settings (in this process)."""
    from tests.chaos import app as chaos

    application = Spillway(settings)
    application.tasks.update(chaos.app.tasks)
    return application
