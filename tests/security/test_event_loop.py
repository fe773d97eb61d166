"""No request the limits allow holds an API process's event loop for 50 ms or more.

Method: one API process (so every request reaches the same event loop). A thread polls
``GET /healthz`` on one keep-alive connection, a new request about every 2 ms, and records how
long each took to be answered: a request that arrives while the loop is held waits until it is
let go, so the longest answer time is the longest hold (plus the poll's own latency). The same
poller first runs with no other request for a baseline; on a loaded 2-core machine that
baseline includes the scheduler's delays, so the bound asserted is the baseline's longest
answer plus 50 ms (this process's collector is off meanwhile: its own full collections held the
poller for up to ~100 ms). Each hostile body is sent alone, at the route's maximum size, and its
answer is checked too. The inputs and answers are listed in docs/security.md.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from tests.api.servers import ApiServer, serving

from spillway.embedded import EmbeddedRedis

BOUND = 0.050
MiB = 1024 * 1024
BATCH = 16 * MiB
TASK = MiB


@pytest.fixture(scope="module")
def server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    yield from serving(redis_server.url, tmp_path_factory.mktemp("api"))


class Poller:
    """Polls /healthz in a thread; `longest` is the longest a request took to be answered."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.longest = 0.0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                if self.polls:  # the first one also opens the connection
                    self.longest = max(self.longest, time.perf_counter() - started)
                self.polls += 1
                time.sleep(0.002)


def _filled(head: bytes, unit: bytes, tail: bytes, size: int, sep: bytes = b",") -> bytes:
    count = (size - len(head) - len(tail)) // (len(unit) + len(sep))
    return head + sep.join([unit] * count) + tail


def _task(payload_unit: bytes, size: int) -> bytes:
    return _filled(b'{"type":"echo","payload":{"a":[', payload_unit, b"]}}", size)


HOSTILE: dict[str, tuple[str, bytes, int]] = {
    "batch of 5.6 million empty objects": (
        "/tasks/batch",
        _filled(b'{"tasks":[', b"{}", b"]}", BATCH),
        422,
    ),
    "batch of 8 million numbers": ("/tasks/batch", _filled(b'{"tasks":[', b"0", b"]}", BATCH), 422),
    "batch of one 16 MiB task": (
        "/tasks/batch",
        b'{"tasks":[' + _task(b"[]", BATCH - 20) + b"]}",
        422,  # its first 100,001 arrays are found before its size is
    ),
    "batch nesting 16 MiB deep": ("/tasks/batch", b'{"tasks":' + b"[" * (BATCH - 20) + b"}", 422),
    "batch of 1000 tasks of 5,500 empty arrays each": (
        "/tasks/batch",
        b'{"tasks":[' + b",".join([_task(b"[]", 16_700)] * 1000) + b"]}",
        200,
    ),
}

SINGLE: dict[str, tuple[str, bytes, int]] = {
    # Over SPILLWAY_MAX_JSON_CONTAINERS (100,000): refused after counting, before parsing.
    "task of 350,000 empty arrays": ("/tasks", _task(b"[]", TASK - 100), 422),
    "task of 350,000 empty arrays, then a NaN": (
        "/tasks",
        _task(b"[]", TASK - 100)[:-3] + b",NaN]}}",
        422,
    ),
    "batch of one task of 350,000 empty arrays": (
        "/tasks/batch",
        b'{"tasks":[' + _task(b"[]", TASK - 100) + b"]}",
        422,
    ),
    "task of 65,000 objects, one colon escaped": (
        "/tasks",
        _task(b'{"a":"\\u003a"}', TASK - 100),
        202,
    ),
    # The most a task may hold: the longest parse the limit allows.
    "task of 99,990 empty arrays (at the limit)": ("/tasks", _task(b"[]", 99_990 * 3), 202),
    "task of 99,990 objects, the last key twice (at the limit)": (
        "/tasks",
        _task(b'{"a":1}', 99_990 * 8)[:-3] + b',{"a":1,"\\u0061":2}]}}',
        422,
    ),
    "batch of one task of 99,990 empty arrays (at the limit)": (
        "/tasks/batch",
        b'{"tasks":[' + _task(b"[]", 99_990 * 3) + b"]}",
        200,
    ),
    "task of 130,000 objects, the last key twice (over the limit)": (
        "/tasks",
        _task(b'{"a":1}', TASK - 100)[:-3] + b',{"a":1,"\\u0061":2}]}}',
        422,
    ),
    "task nesting 1 MiB deep": ("/tasks", b"[" * (TASK - 100), 422),
    "task of one string of 170,000 escapes": (
        "/tasks",
        b'{"type":"echo","payload":{"a":"' + b"\\u00e9" * ((TASK - 100) // 6) + b'"}}',
        202,
    ),
}


def test_no_hostile_batch_holds_the_event_loop_for_50_ms(server: ApiServer) -> None:
    _assert_held_less_than_bound(server, HOSTILE)


def test_no_hostile_task_holds_the_event_loop_for_50_ms(server: ApiServer) -> None:
    _assert_held_less_than_bound(server, SINGLE)


# The densest containers a 1 MiB task can hold (orjson alone built them in about the bound),
# and the densest the container limit lets through.
DENSEST: dict[str, tuple[str, bytes, int]] = {
    "task of 515,000 arrays, nested 28 deep": (
        "/tasks",
        _task(b"[" * 28 + b"]" * 28, TASK - 100),
        422,
    ),
    "task of 99,960 arrays, nested 28 deep (at the limit)": (
        "/tasks",
        _task(b"[" * 28 + b"]" * 28, 3_570 * 57),
        202,
    ),
}


def test_the_densest_task_holds_the_event_loop_less_than_50_ms(server: ApiServer) -> None:
    _assert_held_less_than_bound(server, DENSEST)


def _assert_held_less_than_bound(
    server: ApiServer, cases: dict[str, tuple[str, bytes, int]]
) -> None:
    # This process's own full collections (its heap holds the whole suite) held the poller
    # thread for up to ~100 ms, which read as the server holding its loop.
    gc.disable()
    try:
        _measure(server, cases)
    finally:
        gc.enable()


def _measure(server: ApiServer, cases: dict[str, tuple[str, bytes, int]]) -> None:
    with Poller(server.url) as idle:
        time.sleep(1.0)
    allowed = idle.longest + BOUND
    held: dict[str, float] = {}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for name, (route, body, status) in cases.items():
            # A hold over the bound is measured again, up to twice: the server holding its
            # loop does so every time, while a stall of this shared 2-CPU machine (the suite
            # runs two processes) does not (CI once saw 57 ms for a case that takes 22-27).
            for _ in range(3):
                with Poller(server.url) as poller:
                    time.sleep(0.05)
                    answer = client.post(
                        route, content=body, headers={"content-type": "application/json"}
                    )
                    time.sleep(0.05)
                held[name] = min(held.get(name, poller.longest), poller.longest)
                print(f"{name}: {answer.status_code}, {poller.longest * 1e3:.1f} ms")
                assert answer.status_code == status, (name, answer.text[:300])
                if held[name] < allowed:
                    break
    print(f"idle: {idle.longest * 1e3:.1f} ms")
    assert all(longest < allowed for longest in held.values()), (idle.longest, held)
