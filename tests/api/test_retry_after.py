"""Retry-After that tells the truth, against real servers and a real Redis: a 429 waits for the
backlog to drain at the measured rate (jittered, bounded), a 202 above the slow-down threshold
advises a wait, a 503 is short and spread, and the `Client` honours them."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.servers import ApiServer, drain, serving

from spillway import BacklogFull, Client, Settings, Spillway, Worker
from spillway.embedded import EmbeddedRedis

TASK = {"type": "echo", "payload": {}}
#: Samples often and forgets fast, so a test sees the drain rate settle within a second or two.
QUICK = {
    "SPILLWAY_DRAIN_SAMPLE_INTERVAL": "0.1",
    "SPILLWAY_DRAIN_HALFLIFE": "0.5",
    "SPILLWAY_SLOW_DOWN_AT": "0.5",
}
DEADLINE = 20.0
#: The pace of `paced_worker`: 4 at a time, half a second each.
CONCURRENCY, RUN_TIME = 4, 0.5


def _server(redis: EmbeddedRedis, tmp: pytest.TempPathFactory, **env: str) -> Iterator[ApiServer]:
    # A server of each test's own: its drain rate starts unmeasured, not from another test's.
    yield from serving(redis.url, tmp.mktemp("api"), {**QUICK, **env})


@pytest.fixture
def small(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """A backlog of 40 (slowing down above 20)."""
    yield from _server(redis_server, tmp_path_factory, SPILLWAY_BACKLOG_LIMIT="40")


@pytest.fixture
def large(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """A backlog of 200 (slowing down above 100)."""
    yield from _server(redis_server, tmp_path_factory, SPILLWAY_BACKLOG_LIMIT="200")


def settings_of(server: ApiServer) -> Settings:
    """The settings the server runs with, its backlog limit included."""
    limit = int(server.env["SPILLWAY_BACKLOG_LIMIT"])
    return server.settings.model_copy(update={"backlog_limit": limit})


@pytest.fixture
async def emptied(small: ApiServer) -> AsyncIterator[Spillway]:
    """The small server's application in this process, its backlog drained before and after."""
    app = paced(settings_of(small))
    await drain(app)
    try:
        yield app
    finally:
        await drain(app)
        await app.close()


def paced(settings: Settings, done: list[int] | None = None) -> Spillway:
    """The servers' application with an `echo` that takes `RUN_TIME` (a known drain rate),
    counting its runs in `done`."""
    app = Spillway(settings)
    runs = done if done is not None else [0]

    @app.task(max_retries=0)
    async def echo(payload: dict[str, Any]) -> None:
        await asyncio.sleep(RUN_TIME)  # the work itself: it sets the pace
        runs[0] += 1

    return app


async def fill(app: Spillway) -> None:
    """Enqueue until the backlog refuses one."""
    while True:
        results = await app.enqueue_many([("echo", {})] * 10)
        if any(isinstance(r.error, BacklogFull) for r in results):
            return


async def refusals(
    http: httpx.AsyncClient, app: Spillway, count: int, settled: Any = lambda _: True
) -> list[int]:
    """The Retry-After of `count` refusals, once one `settled` (kept full in between)."""
    waits: list[int] = []
    deadline = time.monotonic() + DEADLINE
    while len(waits) < count:
        assert time.monotonic() < deadline, f"not settled: {waits[-10:]}"
        await fill(app)
        answer = await http.post("/tasks", json=TASK)
        if answer.status_code == 429:
            wait = int(answer.headers["retry-after"])
            if waits or settled(wait):
                waits.append(wait)
        else:  # a worker freed a slot first
            assert answer.status_code == 202
        await asyncio.sleep(0.02)  # polling: the sampler's figures change ten times a second
    return waits


async def test_a_full_backlog_that_does_not_drain_advises_the_upper_bound_spread_out(
    small: ApiServer, emptied: Spillway
) -> None:
    async with httpx.AsyncClient(base_url=small.url) as http:
        waits = await refusals(http, emptied, 30, settled=lambda w: w > 3)

    assert all(30 <= w <= 60 for w in waits)  # 60 s, jittered by half, within the bounds
    assert len(set(waits)) > 5


async def test_a_draining_backlog_advises_less_and_a_larger_one_more(
    small: ApiServer, large: ApiServer
) -> None:
    medians = []
    for server in (small, large):
        done = [0]
        app = paced(settings_of(server), done)
        worker = Worker(app, concurrency=CONCURRENCY)
        running = asyncio.create_task(worker.run())
        try:
            async with httpx.AsyncClient(base_url=server.url) as http:
                # Once the worker has run for three half-lives of the average.
                waits = await refusals(http, app, 20, settled=lambda _, d=done: d[0] >= 12)
        finally:
            worker.stop()
            await running
            await drain(app)
            await app.close()
        assert all(1 <= w <= 60 for w in waits)
        medians.append(statistics.median(waits))

    # About 8 tasks a second drain: 20 tasks above the small one's threshold take ~2.5 s,
    # 100 above the large one's ~12.5 s (each jittered by half).
    small_wait, large_wait = medians
    assert small_wait < 10
    assert large_wait > small_wait * 2


async def test_a_202_above_the_threshold_advises_a_wait_and_one_below_does_not(
    small: ApiServer, emptied: Spillway
) -> None:
    async with httpx.AsyncClient(base_url=small.url) as http:
        calm = await http.post("/tasks", json=TASK)
        await emptied.enqueue_many([("echo", {})] * 25)  # the threshold is 20
        deadline = time.monotonic() + DEADLINE
        while "retry-after" not in (busy := await http.post("/tasks", json=TASK)).headers:
            assert busy.status_code == 202
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)  # until the sampler's next figures

    assert calm.status_code == 202
    assert "retry-after" not in calm.headers
    assert busy.status_code == 202
    assert 1 <= int(busy.headers["retry-after"]) <= 60


async def test_a_503_advises_a_short_wait_spread_over_one_to_three_seconds(
    tmp_path: Path,
) -> None:
    with EmbeddedRedis() as redis:
        server = ApiServer(redis.url, env={"SPILLWAY_REDIS_TIMEOUT": "0.2"}).start(tmp_path)
        try:
            redis.kill()
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                answers = [await http.post("/tasks", json=TASK) for _ in range(30)]
        finally:
            server.stop()

    assert {a.status_code for a in answers} == {503}
    waits = [a.headers["retry-after"] for a in answers]
    assert set(waits) <= {"1", "2", "3"}
    assert len(set(waits)) > 1


class Recording(httpx.HTTPTransport):
    """A real transport that records each answer to ``POST /tasks`` and calls `on_429` once."""

    def __init__(self, on_429: Any) -> None:
        super().__init__()
        self.on_429 = on_429
        self.seen: list[tuple[float, int, str | None, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/tasks":
            key = request.headers.get("idempotency-key")
            when = time.monotonic()
            self.seen.append((when, response.status_code, key, response.headers.get("retry-after")))
            if response.status_code == 429 and self.on_429 is not None:
                self.on_429, on_429 = None, self.on_429
                on_429()
        return response


@pytest.fixture
def brief(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """A backlog of 3 whose refusals wait at most 2 s."""
    yield from _server(
        redis_server, tmp_path_factory, SPILLWAY_BACKLOG_LIMIT="3", SPILLWAY_RETRY_AFTER_MAX="2"
    )


def test_the_client_retries_a_429_after_the_advised_wait_with_one_idempotency_key(
    brief: ApiServer,
) -> None:
    app = brief.spillway()
    fillers = asyncio.run(_fill_and_close(app))
    room = threading.Event()

    def make_room() -> None:  # a slot frees while the client waits
        with httpx.Client(base_url=brief.url) as other:
            assert other.delete(f"/tasks/{fillers[0]}").status_code == 202
        room.set()

    transport = Recording(make_room)
    try:
        with Client(brief.url, transport=transport, retries=3, max_retry_wait=5) as client:
            task_id = client.submit("echo", {"n": 1})
            again = client.submit("echo", {"n": 1}, idempotency_key=transport.seen[-1][2])
    finally:
        asyncio.run(_drain_and_close(brief.spillway()))

    assert room.is_set()
    (refused_at, refused, first_key, advised), (retried_at, accepted, key, _) = transport.seen[:2]
    assert (refused, accepted) == (429, 202)
    assert advised is not None
    assert 1 <= int(advised) <= 2
    assert int(advised) <= retried_at - refused_at <= int(advised) * 1.5 + 1
    assert first_key is not None
    assert key == first_key  # the same task: a retry that Redis had written is not a second one
    assert again == task_id


async def _fill_and_close(app: Spillway) -> list[str]:
    await drain(app)
    ids = [await app.enqueue("echo", {"n": n}) for n in range(3)]
    await app.close()
    return ids


async def _drain_and_close(app: Spillway) -> None:
    await drain(app)
    await app.close()
