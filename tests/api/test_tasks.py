"""Reading, waiting for and cancelling tasks; dead letters, stats and health."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from tests.api.sample_app import Resize
from tests.api.servers import drain
from tests.engine import past_expiry

from spillway import Spillway, Worker

RESIZE = {"url": "https://example.com/cat.jpg", "width": 3, "height": 4}


async def submit(http: httpx.AsyncClient, task_type: str, payload: object) -> str:
    response = await http.post("/tasks", json={"type": task_type, "payload": payload})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def test_queued_task_reads_as_its_status_resource(http: httpx.AsyncClient) -> None:
    task_id = await submit(http, "resize", RESIZE)

    response = await http.get(f"/tasks/{task_id}")

    assert response.status_code == 200
    doc = response.json()
    assert {k: doc[k] for k in ("id", "type", "queue", "status", "attempts", "result")} == {
        "id": task_id, "type": "resize", "queue": "default", "status": "queued",
        "attempts": 0, "result": None,
    }  # fmt: skip
    assert doc["links"] == {"self": f"/tasks/{task_id}"}
    assert doc["created_at"] is not None
    assert "payload" not in doc


@pytest.mark.parametrize("task_id", ["0" * 32, "not-an-id", "Z" * 32])
async def test_unknown_task_is_404(http: httpx.AsyncClient, task_id: str) -> None:
    response = await http.get(f"/tasks/{task_id}")

    assert response.status_code == 404
    assert response.json()["type"] == "urn:spillway:problem:task-not-found"


async def test_finished_task_shows_its_result(http: httpx.AsyncClient, spillway: Spillway) -> None:
    task_id = await submit(http, "resize", RESIZE)
    await drain(spillway, task_id)

    doc = (await http.get(f"/tasks/{task_id}")).json()

    assert (doc["status"], doc["result"], doc["attempts"]) == ("succeeded", {"pixels": 12}, 1)
    assert doc["finished_at"] is not None


async def test_long_poll_returns_as_soon_as_the_task_finishes(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    task_id = await submit(http, "resize", RESIZE)
    started = time.monotonic()
    poll = asyncio.create_task(http.get(f"/tasks/{task_id}", params={"wait": 30}))
    # The server subscribes to the task's completion channel before it waits.
    channel = spillway.broker.keys.for_task(task_id).channel(task_id)
    async with asyncio.timeout(10):
        # Redis's subscriber count is the only sign of it from outside the server process.
        while not dict(await spillway.broker.client.pubsub_numsub(channel)).get(channel):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await drain(spillway, task_id)
    finished = time.monotonic()
    response = await poll

    assert response.json()["status"] == "succeeded"
    assert time.monotonic() - finished < 1.0
    assert time.monotonic() - started < 10


async def test_long_poll_ends_at_its_limit_with_the_current_status(
    http: httpx.AsyncClient,
) -> None:
    task_id = await submit(http, "resize", RESIZE)
    started = time.monotonic()

    response = await http.get(f"/tasks/{task_id}", params={"wait": 0.3})

    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert 0.3 <= time.monotonic() - started < 2.0


@pytest.mark.parametrize("wait", ["61", "-1", "soon"])
async def test_wait_outside_0_to_60_is_422(http: httpx.AsyncClient, wait: str) -> None:
    response = await http.get(f"/tasks/{'0' * 32}", params={"wait": wait})

    assert response.status_code == 422
    doc = response.json()
    assert doc["type"] == "urn:spillway:problem:request-invalid"
    assert doc["errors"][0]["loc"] == ["query", "wait"]


async def test_cancelling_a_queued_task_is_202_and_marks_it_cancelled(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    task_id = await submit(http, "resize", RESIZE)

    response = await http.delete(f"/tasks/{task_id}")

    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    record = await spillway.get(task_id)
    assert (record.status, record.attempts) == ("cancelled", 0)


async def test_cancelling_a_running_task_is_202_running_then_it_ends_cancelled(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    # A worker whose `resize` hangs on this one payload (the API validates it as usual); its
    # renewal, which carries the cancel to it, every third of a second.
    worker_app = Spillway(spillway.settings.model_copy(update={"visibility_timeout": 1.0}))
    hanging = asyncio.Event()

    @worker_app.task(name="resize", max_retries=0)
    async def resize(payload: Resize) -> dict[str, int]:
        if payload.width == 9_999:
            hanging.set()
            await asyncio.sleep(60)
        return {"pixels": payload.width * payload.height}

    task_id = await submit(http, "resize", RESIZE | {"width": 9_999})
    worker = Worker(worker_app)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(hanging.wait(), 10)

        response = await http.delete(f"/tasks/{task_id}")

        assert response.status_code == 202
        doc = response.json()
        assert doc["status"] == "running"
        assert doc["cancel_requested_at"] is not None
        ended = await http.get(f"/tasks/{task_id}", params={"wait": 10})
        assert (ended.json()["status"], ended.json()["result"]) == ("cancelled", None)
        assert (await http.delete(f"/tasks/{task_id}")).status_code == 409
    finally:
        worker.stop()
        await running
        await worker_app.close()


async def test_cancelling_a_finished_task_is_409(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    task_id = await submit(http, "resize", RESIZE)
    await drain(spillway, task_id)

    response = await http.delete(f"/tasks/{task_id}")

    assert response.status_code == 409
    doc = response.json()
    assert (doc["type"], doc["task_status"]) == (
        "urn:spillway:problem:task-not-cancellable", "succeeded",
    )  # fmt: skip


async def test_cancelling_an_unknown_task_is_404(http: httpx.AsyncClient) -> None:
    assert (await http.delete(f"/tasks/{'0' * 32}")).status_code == 404


async def test_failed_task_is_listed_in_the_dlq_and_can_be_replayed(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    task_id = await submit(http, "explode", {"message": "boom"})
    await drain(spillway, task_id)

    record = (await http.get(f"/tasks/{task_id}")).json()
    listed = (await http.get("/dlq", params={"queue": "risky"})).json()["dead_letters"]
    replay = await http.post(f"/dlq/{task_id}/replay")
    again = await http.post(f"/dlq/{task_id}/replay")

    assert (record["status"], record["error"]) == ("dead", "RuntimeError: boom")
    assert task_id in [d["id"] for d in listed]
    assert replay.status_code == 202
    assert replay.headers["location"] == f"/tasks/{task_id}"
    assert (await spillway.get(task_id)).status == "queued"
    assert again.status_code == 404
    await drain(spillway, task_id)


async def test_dlq_limit_is_bounded(http: httpx.AsyncClient) -> None:
    assert (await http.get("/dlq", params={"limit": 0})).status_code == 422
    assert (await http.get("/dlq", params={"limit": 1001})).status_code == 422


async def test_stats_show_queues_and_outcome_counts(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    await drain(spillway, await submit(http, "resize", RESIZE))

    doc = (await http.get("/stats")).json()

    assert {q["queue"] for q in doc["queues"]} >= {"default", "risky"}
    assert doc["counts"]["resize"]["succeeded"] >= 1


async def test_a_task_expiring_unrun_wakes_its_long_poll_and_is_counted(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    before = await expired_counts(http)
    body = {"type": "echo", "payload": {"n": 1}, "expires_s": 0.05}
    response = await http.post("/tasks", json=body)
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    poll = asyncio.create_task(http.get(f"/tasks/{task_id}", params={"wait": 30}))
    channel = spillway.broker.keys.for_task(task_id).channel(task_id)
    async with asyncio.timeout(10):
        while not dict(await spillway.broker.client.pubsub_numsub(channel)).get(channel):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await past_expiry(spillway, task_id)
    await drain(spillway, task_id)
    doc = (await poll).json()

    assert (doc["status"], doc["attempts"], doc["started_at"]) == ("expired", 0, None)
    assert doc["finished_at"] is not None
    assert await expired_counts(http) == (before[0] + 1, before[1] + 1)


async def expired_counts(http: httpx.AsyncClient) -> tuple[int, float]:
    """Expired `echo` tasks as ``GET /stats`` and ``GET /metrics`` count them."""
    stats = (await http.get("/stats")).json()
    line = 'spillway_outcomes_stored_total{outcome="expired",type="echo"} '
    exposed = (await http.get("/metrics")).text
    values = [float(x[len(line) :]) for x in exposed.splitlines() if x.startswith(line)]
    return stats["counts"].get("echo", {}).get("expired", 0), sum(values)


async def test_healthz_and_readyz_answer_when_redis_is_up(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.get("/readyz")).json() == {"status": "ready"}


async def test_unknown_route_and_wrong_method_are_problem_documents(
    http: httpx.AsyncClient,
) -> None:
    missing = await http.get("/nowhere")
    wrong = await http.put("/tasks")

    assert (missing.status_code, missing.json()["title"]) == (404, "Not Found")
    assert (wrong.status_code, wrong.json()["type"]) == (405, "about:blank")
    assert missing.headers["content-type"] == wrong.headers["content-type"]
    assert wrong.headers["content-type"] == "application/problem+json"
