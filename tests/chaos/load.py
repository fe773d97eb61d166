"""The load client: submits tasks over HTTP and records every request's outcome.

A request ends in one of three ways (Jepsen's ok / fail / info): accepted (202 with a task
id), refused (any other status), or indeterminate (no answer: reset, refused connection,
timeout). Times are wall-clock seconds, so they compare with the workers' execution log.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

__all__ = ["History", "Op", "Prober", "drive", "percentile"]


@dataclass(slots=True)
class Op:
    """One HTTP request of a submission (a retried submission has several)."""

    key: str
    url: str
    start: float
    end: float
    status: int | None  # None: indeterminate
    task_id: str | None = None
    retry_after: str | None = None
    problem: str = ""
    error: str = ""

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class History:
    """Every request of a run, in completion order."""

    ops: list[Op] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)  # every submission key sent

    def accepted(self) -> dict[str, set[str]]:
        """key -> the task ids its 202s named."""
        out: dict[str, set[str]] = {}
        for op in self.ops:
            if op.status == 202 and op.task_id:
                out.setdefault(op.key, set()).add(op.task_id)
        return out

    def accepted_ids(self) -> set[str]:
        return {i for ids in self.accepted().values() for i in ids}

    def statuses(self) -> Counter[int | None]:
        return Counter(op.status for op in self.ops)

    def during(self, start: float, end: float) -> list[Op]:
        """Requests sent and answered inside [start, end]."""
        return [op for op in self.ops if op.start >= start and op.end <= end]

    def merge(self, other: History) -> None:
        self.ops += other.ops
        self.keys |= other.keys


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def drive(
    urls: list[str],
    *,
    total: int,
    rate: float,
    concurrency: int = 16,
    task: str | Callable[[int], str] = "work",
    ms: Callable[[int], int] = lambda n: 0,
    idempotent: bool = False,
    retries: int = 0,
    timeout: float = 5.0,
    key_prefix: str = "k",
    blob: str = "",
    stop: asyncio.Event | None = None,
    history: History | None = None,
) -> History:
    """Submit `total` tasks at about `rate` per second with at most `concurrency` in flight.

    Submission n goes to ``urls[n % len(urls)]`` with payload ``{"key": key, "ms": ms(n)}``.
    An indeterminate request is retried up to `retries` times on the next URL, with the same
    ``Idempotency-Key`` when `idempotent`. Stops early when `stop` is set.
    """
    history = history if history is not None else History()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    t0 = time.monotonic()

    async def submit(http: httpx.AsyncClient, n: int) -> None:
        key = f"{key_prefix}{n}"
        name = task(n) if callable(task) else task
        payload: dict[str, object] = {"key": key, "ms": ms(n)}
        if blob:
            payload["blob"] = blob
        body = {"type": name, "payload": payload}
        headers = {"Idempotency-Key": key} if idempotent else {}
        try:
            for attempt in range(retries + 1):
                url = urls[(n + attempt) % len(urls)]
                op = await _post(http, url, key, body, headers)
                history.ops.append(op)
                if op.status is not None:
                    return
                await asyncio.sleep(0.05)
        finally:
            gate.release()

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http, asyncio.TaskGroup() as tg:
        for n in range(total):
            if stop is not None and stop.is_set():
                break
            delay = t0 + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            history.keys.add(f"{key_prefix}{n}")
            tg.create_task(submit(http, n))
    return history


async def _post(
    http: httpx.AsyncClient, url: str, key: str, body: object, headers: dict[str, str]
) -> Op:
    start = time.time()
    try:
        r = await http.post(f"{url}/tasks", json=body, headers=headers)
    except httpx.HTTPError as exc:
        return Op(key, url, start, time.time(), None, error=type(exc).__name__)
    end = time.time()
    task_id = problem = None
    if r.status_code == 202:
        task_id = r.json()["task_id"]
    elif r.headers.get("content-type", "").startswith("application/problem+json"):
        problem = str(r.json().get("type", ""))
    return Op(
        key, url, start, end, r.status_code, task_id, r.headers.get("retry-after"), problem or ""
    )


class Prober:
    """GETs a path every `interval` seconds and records (time, latency, status or None)."""

    def __init__(self, url: str, path: str = "/healthz", interval: float = 0.05) -> None:
        self.url = url
        self.path = path
        self.interval = interval
        self.samples: list[tuple[float, float, int | None]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Prober:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as http:
            while not self._stop.is_set():
                start = time.time()
                try:
                    status: int | None = (await http.get(self.path)).status_code
                except httpx.HTTPError:
                    status = None
                self.samples.append((start, time.time() - start, status))
                await asyncio.sleep(self.interval)
