"""POST /tasks/batch: one request, one Redis round trip, one outcome per task."""

from __future__ import annotations

import httpx
from tests.api.servers import ApiServer

from spillway import Spillway

RESIZE = {"url": "https://example.com/cat.jpg", "width": 3, "height": 4}


async def test_batch_accepts_each_valid_task_and_reports_each_invalid_one(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    tasks = [
        {"type": "resize", "payload": RESIZE},
        {"type": "resize", "payload": {**RESIZE, "height": -1}},
        {"type": "nope", "payload": {}},
        {"type": "echo", "payload": {"n": 1}, "delay_s": "later"},
        {"type": "echo", "payload": {"n": 2}},
    ]

    response = await http.post("/tasks/batch", json={"tasks": tasks})

    assert response.status_code == 200
    doc = response.json()
    assert (doc["accepted"], doc["rejected"]) == (2, 3)
    results = doc["results"]
    assert [r["status"] for r in results] == [
        "queued",
        "rejected",
        "rejected",
        "rejected",
        "queued",
    ]
    assert results[1]["error"]["errors"][0]["loc"] == ["body", "tasks", 1, "payload", "height"]
    assert results[2]["error"]["type"] == "urn:spillway:problem:unknown-task-type"
    assert results[2]["error"]["errors"][0]["loc"] == ["body", "tasks", 2, "type"]
    assert results[3]["error"]["errors"][0]["loc"] == ["body", "tasks", 3, "delay_s"]
    assert (await spillway.get(results[0]["task_id"])).payload == RESIZE
    assert (await spillway.get(results[4]["task_id"])).payload == {"n": 2}


async def test_batch_items_honour_idempotency_keys(http: httpx.AsyncClient) -> None:
    task = {"type": "echo", "payload": {"n": 1}, "idempotency_key": "batch-key-1"}

    first = (await http.post("/tasks/batch", json={"tasks": [task]})).json()["results"][0]
    second = (await http.post("/tasks/batch", json={"tasks": [task]})).json()["results"][0]

    assert (first["duplicate"], second["duplicate"]) == (False, True)
    assert first["task_id"] == second["task_id"]


async def test_batch_larger_than_the_limit_is_refused_whole(tight_server: ApiServer) -> None:
    tasks = [{"type": "echo", "payload": {"n": n}} for n in range(6)]
    async with httpx.AsyncClient(base_url=tight_server.url) as http:
        response = await http.post("/tasks/batch", json={"tasks": tasks})

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "tasks"]


async def test_batch_body_must_be_a_list_of_tasks(http: httpx.AsyncClient) -> None:
    bodies: list[object] = [{"tasks": []}, {"tasks": {}}, [], {"tasks": [{}], "more": 1}]
    for body in bodies:
        response = await http.post("/tasks/batch", json=body)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"


async def test_batch_items_take_their_own_expiry(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    tasks = [
        {"type": "echo", "payload": {"n": 1}, "expires_s": 90},
        {"type": "echo", "payload": {"n": 2}, "expires_s": -1},
        {"type": "echo", "payload": {"n": 3}},
    ]

    doc = (await http.post("/tasks/batch", json={"tasks": tasks})).json()

    assert [r["status"] for r in doc["results"]] == ["queued", "rejected", "queued"]
    assert doc["results"][1]["error"]["errors"][0]["loc"] == ["body", "tasks", 1, "expires_s"]
    first = await spillway.get(doc["results"][0]["task_id"])
    assert first.expires_at is not None
    assert first.created_at is not None
    assert (first.expires_at - first.created_at).total_seconds() == 90
    assert (await spillway.get(doc["results"][2]["task_id"])).expires_at is None
