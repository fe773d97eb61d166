"""Redis trouble and a full backlog: 503/429 with Retry-After, never a hang and never a 202."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from tests.api.servers import ApiServer, drain

from spillway.api.serve import STARTUP_FAILURE
from spillway.embedded import EmbeddedRedis

RESIZE = {"url": "https://example.com/cat.jpg", "width": 3, "height": 4}
TASK = {"type": "resize", "payload": RESIZE}


async def test_paused_redis_gives_503_within_the_timeout_and_healthz_stays_fast(
    http: httpx.AsyncClient, redis_server: EmbeddedRedis
) -> None:
    task_id = (await http.post("/tasks", json=TASK)).json()["task_id"]
    redis_server.pause()
    try:
        started = time.monotonic()
        answers = await asyncio.gather(
            *(http.post("/tasks", json=TASK) for _ in range(8)),
            http.get(f"/tasks/{task_id}"),
            http.get("/readyz"),
        )
        elapsed = time.monotonic() - started
        health_started = time.monotonic()
        health = await http.get("/healthz")
        health_elapsed = time.monotonic() - health_started
    finally:
        redis_server.resume()

    # The server's Redis timeout is 0.25 s: a request may wait out one stuck round trip
    # before its own fails, so 4x that bounds it.
    assert elapsed < 1.0
    assert [a.status_code for a in answers] == [503] * 10
    # No drain figures behind a 503: a short wait, spread (tests/api/test_retry_after.py).
    assert {a.headers["retry-after"] for a in answers} <= {"1", "2", "3"}
    # Writes sent to the frozen Redis may have run before it froze: their outcome is unknown,
    # and each answer names its task. The others (and the reads) are plain refusals.
    kinds = [a.json()["type"].rsplit(":", 1)[1] for a in answers]
    assert set(kinds[:8]) <= {"outcome-unknown", "broker-unavailable"}
    assert "outcome-unknown" in kinds[:8]
    assert kinds[8:] == ["broker-unavailable"] * 2
    unknown = [a.json()["task_id"] for a in answers[:8] if "outcome" in a.json()["type"]]
    assert health.status_code == 200
    assert health_elapsed < 0.2
    after = await http.post("/tasks", json=TASK)
    assert after.status_code == 202
    # Redis ran those writes when it woke, past their deadline: none of them was written.
    looked_up = [(await http.get(f"/tasks/{task_id}")).status_code for task_id in unknown]
    assert looked_up == [404] * len(unknown)


async def test_full_backlog_is_429_with_retry_after_and_trims_nothing(
    tight_server: ApiServer,
) -> None:
    app = tight_server.spillway()
    try:
        await drain(app)
        async with httpx.AsyncClient(base_url=tight_server.url) as http:
            accepted = [(await http.post("/tasks", json=TASK)).json()["task_id"] for _ in range(3)]
            refused = await http.post("/tasks", json=TASK)
            batch = await http.post("/tasks/batch", json={"tasks": [TASK]})

        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60  # the bounds' defaults
        assert refused.json()["type"] == "urn:spillway:problem:backlog-full"
        assert batch.json()["results"][0]["error"]["status"] == 429
        assert [(await app.get(t)).status for t in accepted] == ["queued"] * 3
        assert await app.broker.work.backlog(app.lanes()) == 3
    finally:
        await drain(app)
        await app.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_start_up_fails_when_redis_may_evict_keys(tmp_path: Path, workers: int) -> None:
    with EmbeddedRedis(extra_args=["--maxmemory-policy", "allkeys-lru"]) as evicting:
        server = ApiServer(evicting.url, workers=workers).start(tmp_path, wait=False)
        try:
            assert server.process is not None
            code = server.process.wait(30)
        finally:
            server.stop()

    assert code == STARTUP_FAILURE  # on every uvicorn: 0.34 returned and the process exited 0
    assert "maxmemory-policy" in server.log()


def test_sigterm_stops_the_server_cleanly(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    server = ApiServer(redis_server.url).start(tmp_path)

    code = server.stop()

    assert code == 0
    assert "Traceback" not in server.log()


def _unread_bytes(port: int) -> int:
    """Bytes that reached the sockets of a server listening on `port` and that it has not read
    (from /proc/net/tcp: a frozen server reads nothing)."""
    unread = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port:
            unread += int(fields[4].split(":")[1], 16)
    return unread


async def test_a_connection_lost_after_the_write_was_sent_is_a_503_naming_the_task(
    tmp_path: Path,
) -> None:
    with EmbeddedRedis() as redis:
        server = ApiServer(redis.url, env={"SPILLWAY_REDIS_TIMEOUT": "5"}).start(tmp_path)
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as http:
                assert (await http.post("/tasks", json=TASK)).status_code == 202
                redis.pause()
                answer = asyncio.ensure_future(http.post("/tasks", json=TASK))
                # Redis dies with the task's write in its socket: it could as well have run it.
                deadline = time.monotonic() + 10
                # A socket's queue has no event to wait for: it is polled.
                while _unread_bytes(redis.port) < 200 and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                redis.kill()
                refused = await answer
                # A write that never reached Redis is refused as a certain 503.
                certain = await http.post("/tasks", json=TASK)
                redis.restart()
                problem = refused.json()
                # The client asks; here Redis was frozen, so it had not run the write.
                looked_up = await http.get(f"/tasks/{problem['task_id']}")
        finally:
            server.stop()

    assert refused.status_code == 503
    assert refused.headers["retry-after"] in {"1", "2", "3"}
    assert problem["type"] == "urn:spillway:problem:outcome-unknown"
    assert problem["task_id"] in problem["detail"]
    assert certain.status_code == 503
    assert certain.json()["type"] == "urn:spillway:problem:broker-unavailable"
    assert looked_up.status_code == 404
