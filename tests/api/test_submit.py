"""POST /tasks and POST /process: the durable 202, its options, idempotency and every refusal."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.api.servers import ApiServer

from spillway import Spillway, TaskStatus

RESIZE = {"url": "https://example.com/cat.jpg", "width": 640, "height": 480}
PROBLEM = "application/problem+json"


async def backlog(app: Spillway) -> int:
    return await app.broker.work.backlog(app.lanes())


async def test_submit_answers_202_only_once_the_task_is_stored(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    response = await http.post("/tasks", json={"type": "resize", "payload": RESIZE})

    assert response.status_code == 202
    body = response.json()
    assert body == {"task_id": body["task_id"], "status": "queued"}
    assert response.headers["location"] == f"/tasks/{body['task_id']}"
    record = await spillway.get(body["task_id"])
    assert (record.type, record.status, record.payload) == ("resize", TaskStatus.QUEUED, RESIZE)


async def test_submit_options_set_delay_retries_and_timeout(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    body = {"type": "echo", "payload": {"a": 1}, "delay_s": 60, "max_retries": 5, "timeout_s": 2}
    response = await http.post("/tasks", json=body)

    assert response.status_code == 202
    record = await spillway.get(response.json()["task_id"])
    assert record.max_retries == 5
    assert record.due_at is not None
    assert record.created_at is not None
    assert 59 <= (record.due_at - record.created_at).total_seconds() <= 61


async def test_process_enqueues_its_body_as_the_default_task_type(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    response = await http.post("/process", json=RESIZE)

    assert response.status_code == 202
    record = await spillway.get(response.json()["task_id"])
    assert (record.type, record.payload) == ("resize", RESIZE)
    assert response.headers["location"] == f"/tasks/{record.id}"


async def test_process_validates_its_body_as_the_payload(http: httpx.AsyncClient) -> None:
    response = await http.post("/process", json={**RESIZE, "width": "wide"})

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "width"]


async def test_same_idempotency_key_and_body_give_the_same_task_once(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    request = {"type": "resize", "payload": RESIZE}
    headers = {"Idempotency-Key": "order-42"}
    first = await http.post("/tasks", json=request, headers=headers)
    before = await backlog(spillway)
    second = await http.post("/tasks", json=request, headers=headers)

    assert first.status_code == second.status_code == 202
    assert second.json()["task_id"] == first.json()["task_id"]
    assert await backlog(spillway) == before


async def test_same_idempotency_key_with_another_body_is_422(http: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "order-43"}
    first = await http.post("/tasks", json={"type": "resize", "payload": RESIZE}, headers=headers)
    other = {"type": "resize", "payload": {**RESIZE, "width": 1}}
    second = await http.post("/tasks", json=other, headers=headers)

    assert first.status_code == 202
    assert second.status_code == 422
    assert second.json()["type"] == "urn:spillway:problem:idempotency-key-reused"


@pytest.mark.parametrize("key", [b"", b"k" * 256, b"caf\xc3\xa9"], ids=["empty", "long", "utf8"])
async def test_malformed_idempotency_key_is_400(http: httpx.AsyncClient, key: bytes) -> None:
    headers = [(b"Content-Type", b"application/json"), (b"Idempotency-Key", key)]
    body = b'{"type": "echo", "payload": {}}'
    response = await http.post("/tasks", content=body, headers=headers)

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]


def _problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    doc: dict[str, Any] = response.json()
    assert doc["type"] == f"urn:spillway:problem:{slug}"
    assert doc["status"] == status
    assert doc["title"]
    assert doc["detail"]
    return doc


async def test_unknown_task_type_is_422_naming_the_type_field(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    before = await backlog(spillway)
    response = await http.post("/tasks", json={"type": "nope", "payload": {}})

    doc = _problem(response, 422, "unknown-task-type")
    assert doc["errors"][0]["loc"] == ["body", "type"]
    assert doc["known"] == ["echo", "explode", "resize"]
    assert await backlog(spillway) == before


async def test_invalid_payload_is_422_naming_the_field(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    before = await backlog(spillway)
    response = await http.post("/tasks", json={"type": "resize", "payload": {**RESIZE, "width": 0}})

    doc = _problem(response, 422, "payload-invalid")
    assert [e["loc"] for e in doc["errors"]] == [["body", "payload", "width"]]
    assert "body.payload.width" in doc["detail"]
    assert await backlog(spillway) == before


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"type": "resize", "payload": RESIZE, "delay": 5}, ["body", "delay"]),
        ({"type": "resize", "payload": RESIZE, "delay_s": -1}, ["body", "delay_s"]),
        ({"type": "resize", "payload": RESIZE, "max_retries": "3"}, ["body", "max_retries"]),
        ({"type": "resize", "payload": RESIZE, "timeout_s": 0}, ["body", "timeout_s"]),
        ({"payload": RESIZE}, ["body", "type"]),
        ([1, 2], ["body"]),
    ],
    ids=["unknown-field", "negative-delay", "string-retries", "zero-timeout", "no-type", "list"],
)
async def test_invalid_envelope_is_422_naming_the_field(
    http: httpx.AsyncClient, body: Any, loc: list[str]
) -> None:
    doc = _problem(await http.post("/tasks", json=body), 422, "request-invalid")

    assert doc["errors"][0]["loc"] == loc


@pytest.mark.parametrize(
    "raw", [b'{"type": "resize", "payload": ', b"{'type': 1}", b"", b"\xff\xfe"]
)
async def test_malformed_json_is_400(
    http: httpx.AsyncClient, spillway: Spillway, raw: bytes
) -> None:
    before = await backlog(spillway)
    response = await http.post("/tasks", content=raw, headers={"Content-Type": "application/json"})

    _problem(response, 400, "invalid-json")
    assert await backlog(spillway) == before


@pytest.mark.parametrize(
    "value", [b"NaN", b"Infinity", b"-Infinity", b'"\\ud800"', b'"x\\udfff"'],
    ids=["nan", "inf", "-inf", "lone-high-surrogate", "lone-low-surrogate"],
)  # fmt: skip
async def test_unstorable_json_values_are_422(
    http: httpx.AsyncClient, spillway: Spillway, value: bytes
) -> None:
    raw = b'{"type": "echo", "payload": {"v": ' + value + b"}}"
    before = await backlog(spillway)
    response = await http.post("/tasks", content=raw, headers={"Content-Type": "application/json"})

    _problem(response, 422, "unsupported-json")
    assert await backlog(spillway) == before


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "nope", "type": "echo", "payload": {}}',
        b'{"type": "echo", "payload": {"n": 1, "n": 2}}',
    ],
    ids=["top-level", "in-the-payload"],
)
async def test_duplicate_keys_are_422_and_enqueue_nothing(
    http: httpx.AsyncClient, spillway: Spillway, raw: bytes
) -> None:
    before = await backlog(spillway)
    response = await http.post("/tasks", content=raw, headers={"Content-Type": "application/json"})

    doc = _problem(response, 422, "unsupported-json")
    assert "duplicate key" in doc["detail"]
    assert await backlog(spillway) == before


async def test_nesting_deeper_than_the_limit_is_refused(http: httpx.AsyncClient) -> None:
    deep = b"[" * 40 + b"]" * 40
    raw = b'{"type": "echo", "payload": {"v": ' + deep + b"}}"
    response = await http.post("/tasks", content=raw, headers={"Content-Type": "application/json"})

    doc = _problem(response, 422, "unsupported-json")
    assert "deeper" in doc["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_other_media_types_are_415(api_server: ApiServer, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with httpx.AsyncClient(base_url=api_server.url) as http:
        response = await http.post("/tasks", content=b'{"type": "echo"}', headers=headers)

    _problem(response, 415, "unsupported-media-type")


async def test_json_media_type_with_charset_or_suffix_is_accepted(http: httpx.AsyncClient) -> None:
    raw = b'{"type": "echo", "payload": {}}'
    for content_type in ("application/json; charset=utf-8", "application/vnd.task+json"):
        response = await http.post("/tasks", content=raw, headers={"Content-Type": content_type})
        assert response.status_code == 202, content_type


async def test_expires_s_sets_a_deadline_counted_from_the_accept(
    http: httpx.AsyncClient, spillway: Spillway
) -> None:
    body = {"type": "echo", "payload": {"a": 1}, "delay_s": 10, "expires_s": 60}
    response = await http.post("/tasks", json=body)

    assert response.status_code == 202
    doc = (await http.get(response.headers["location"])).json()
    record = await spillway.get(response.json()["task_id"])
    assert record.created_at is not None
    assert record.expires_at is not None
    assert (record.expires_at - record.created_at).total_seconds() == 60
    assert doc["expires_at"] is not None
    assert doc["status"] == "queued"


@pytest.mark.parametrize(
    "expires", [-1, 0, "5", True, 10**9], ids=["negative", "zero", "string", "bool", "huge"]
)
async def test_an_invalid_expires_s_is_422_naming_the_field(
    http: httpx.AsyncClient, spillway: Spillway, expires: Any
) -> None:
    before = await backlog(spillway)
    body = {"type": "echo", "payload": {}, "expires_s": expires}
    response = await http.post("/tasks", json=body)

    doc = _problem(response, 422, "request-invalid")
    assert doc["errors"][0]["loc"] == ["body", "expires_s"]
    assert await backlog(spillway) == before


async def test_a_nan_expires_s_is_422(http: httpx.AsyncClient) -> None:
    raw = b'{"type": "echo", "payload": {}, "expires_s": NaN}'
    response = await http.post("/tasks", content=raw, headers={"Content-Type": "application/json"})

    _problem(response, 422, "unsupported-json")


async def test_a_delay_as_long_as_the_expiry_is_422(http: httpx.AsyncClient) -> None:
    body = {"type": "echo", "payload": {}, "delay_s": 30, "expires_s": 30}
    doc = _problem(await http.post("/tasks", json=body), 422, "payload-invalid")

    assert doc["errors"][0]["loc"] == ["body", "expires"]
    assert "longer than the delay" in doc["errors"][0]["msg"]


async def test_priority_is_taken_by_tasks_and_batch_items(http: httpx.AsyncClient) -> None:
    single = await http.post("/tasks", json={"type": "echo", "payload": {}, "priority": "high"})
    items: list[dict[str, Any]] = [
        {"type": "echo", "payload": {}, "priority": p} for p in ("low", "default")
    ]
    batch = await http.post(
        "/tasks/batch", json={"tasks": [*items, {"type": "echo", "payload": {}}]}
    )

    assert single.status_code == 202
    ids = [single.json()["task_id"]] + [r["task_id"] for r in batch.json()["results"]]
    shown = [(await http.get(f"/tasks/{i}")).json() for i in ids]
    assert [doc["priority"] for doc in shown] == ["high", "low", "default", "default"]
    assert {doc["queue"] for doc in shown} == {"default"}


@pytest.mark.parametrize(
    "priority", ["urgent", 42, "", None], ids=["word", "number", "empty", "null"]
)
async def test_an_unknown_priority_is_422_naming_the_field(
    http: httpx.AsyncClient, spillway: Spillway, priority: Any
) -> None:
    before = await backlog(spillway)
    body = {"type": "echo", "payload": {}, "priority": priority}
    response = await http.post("/tasks", json=body)

    if priority is None:  # null: the type's own priority
        assert response.status_code == 202
        return
    doc = _problem(response, 422, "request-invalid")
    assert doc["errors"][0]["loc"] == ["body", "priority"]
    assert await backlog(spillway) == before
