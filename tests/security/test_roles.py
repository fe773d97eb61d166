"""Roles of API keys: a client key sees only its own tasks; admins see everything.

Through a real server (`tests.api.servers`) with two client keys and an admin key. Each input
here is in docs/security.md ("Roles", "What an answer reveals").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from tests.api.servers import ApiServer, drain, serving

from spillway import Spillway
from spillway.api.auth import Auth
from spillway.embedded import EmbeddedRedis

ALICE, BOB, ADMIN = "alice-key-1f8e", "bob-key-77a0", "admin-key-c3d9"
RESIZE = {"url": "https://example.com/a.png", "width": 2, "height": 3}
TASK = {"type": "resize", "payload": RESIZE}
UNKNOWN_ID = "0" * 32


def key(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    env = {"SPILLWAY_API_KEYS": f"{ALICE},{BOB}", "SPILLWAY_ADMIN_KEYS": ADMIN}
    yield from serving(redis_server.url, tmp_path_factory.mktemp("roles"), env)


@pytest.fixture
async def http(server: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
async def app(server: ApiServer) -> AsyncIterator[Spillway]:
    application = server.spillway()
    yield application
    await application.close()


async def submit(http: httpx.AsyncClient, as_key: str, task: Mapping[str, Any] = TASK) -> str:
    response = await http.post("/tasks", json=task, headers=key(as_key))
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def poison(app: Spillway, server: ApiServer, task_id: str, field: str, value: str) -> None:
    """Write a malformed field into a task's record, as anyone with Redis access could."""
    async with aioredis.Redis.from_url(server.redis_url) as redis:
        await redis.hset(app.broker.core.keys.for_task(task_id).task(task_id), field, value)


def not_found(response: httpx.Response, task_id: str) -> None:
    """The answer an id no task ever had gets: nothing tells another's task from none."""
    assert response.status_code == 404, response.text
    assert response.json() == {
        "type": "urn:spillway:problem:task-not-found",
        "title": "Task not found",
        "status": 404,
        "detail": f"no task with id {task_id!r}",
        "task_id": task_id,
    }


async def test_a_client_reads_waits_for_and_cancels_only_its_own_tasks(
    http: httpx.AsyncClient,
) -> None:
    mine = await submit(http, ALICE)
    not_found(await http.get(f"/tasks/{UNKNOWN_ID}", headers=key(BOB)), UNKNOWN_ID)

    assert (await http.get(f"/tasks/{mine}", headers=key(ALICE))).json()["status"] == "queued"
    not_found(await http.get(f"/tasks/{mine}", headers=key(BOB)), mine)
    not_found(await http.get(f"/tasks/{mine}?wait=5", headers=key(BOB)), mine)
    not_found(await http.delete(f"/tasks/{mine}", headers=key(BOB)), mine)
    # Bob's cancel changed nothing; an admin sees the task, and Alice may cancel it.
    assert (await http.get(f"/tasks/{mine}", headers=key(ADMIN))).json()["status"] == "queued"
    cancelled = await http.delete(f"/tasks/{mine}", headers=key(ALICE))
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"


async def test_tasks_of_a_batch_and_of_process_belong_to_their_submitter(
    http: httpx.AsyncClient,
) -> None:
    batch = await http.post("/tasks/batch", json={"tasks": [TASK, TASK]}, headers=key(ALICE))
    processed = await http.post("/process", json=RESIZE, headers=key(ALICE))
    ids = [r["task_id"] for r in batch.json()["results"]] + [processed.json()["task_id"]]

    for task_id in ids:
        assert (await http.get(f"/tasks/{task_id}", headers=key(ALICE))).status_code == 200
        not_found(await http.get(f"/tasks/{task_id}", headers=key(BOB)), task_id)
        assert (await http.get(f"/tasks/{task_id}", headers=key(ADMIN))).status_code == 200


async def test_a_client_waits_for_its_own_task_to_finish(
    http: httpx.AsyncClient, app: Spillway
) -> None:
    task_id = await submit(http, ALICE)
    await drain(app, task_id)

    done = await http.get(f"/tasks/{task_id}?wait=5", headers=key(ALICE))
    assert done.json()["status"] == "succeeded"
    assert done.json()["result"] == {"pixels": 6}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/dlq"),
        ("POST", f"/dlq/{UNKNOWN_ID}/replay"),
        ("GET", "/stats"),
        ("GET", "/metrics"),
        ("GET", "/dashboard"),
        ("GET", "/dashboard/state"),
        ("POST", f"/dashboard/replay/{UNKNOWN_ID}"),
        ("POST", "/queues/default/resume"),
        ("POST", "/dashboard/queues/default/resume"),
        ("GET", f"/tasks/{UNKNOWN_ID}/anything"),
        ("GET", "/a-route-added-later"),
    ],
)
async def test_only_an_admin_key_reaches_the_operators_paths(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    headers = {**key(ALICE), "X-Spillway-Dashboard": "1"}
    refused = await http.request(method, path, headers=headers)
    assert refused.status_code == 403
    assert refused.json()["type"] == "urn:spillway:problem:forbidden"
    assert "www-authenticate" not in refused.headers  # a valid key: no login prompt

    admitted = await http.request(method, path, headers={**headers, **key(ADMIN)})
    assert admitted.status_code in (200, 202, 404)  # 404: no such dead letter or route


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/queues/default/pause", None),
        ("/dashboard/queues/default/pause", None),
        ("/tasks/cancel", {"queue": "default"}),  # not a task's path, for all its looks
        ("/dashboard/cancel", {"queue": "default"}),
    ],
)
async def test_only_an_admin_key_pauses_a_queue_or_cancels_in_bulk(
    http: httpx.AsyncClient, app: Spillway, path: str, body: object
) -> None:
    mine = await submit(http, ALICE)
    headers = {**key(ALICE), "X-Spillway-Dashboard": "1"}

    refused = await http.post(path, json=body, headers=headers)

    assert refused.status_code == 403
    assert refused.json()["type"] == "urn:spillway:problem:forbidden"
    assert await app.paused() == []
    assert (await http.get(f"/tasks/{mine}", headers=key(ALICE))).json()["status"] == "queued"
    admitted = await http.post(path, json=body, headers={**headers, **key(ADMIN)})
    assert admitted.status_code == 200, admitted.text
    assert await app.resume("default") == ("pause" in path)  # pauses nothing else: undo it
    if "cancel" in path:
        assert (await http.get(f"/tasks/{mine}", headers=key(ALICE))).json()["status"] == (
            "cancelled"
        )


async def test_an_unknown_type_does_not_list_the_registered_types_to_a_client(
    http: httpx.AsyncClient,
) -> None:
    task = {"type": "no-such-type", "payload": {}}
    as_client = await http.post("/tasks", json=task, headers=key(ALICE))
    in_batch = await http.post("/tasks/batch", json={"tasks": [task]}, headers=key(ALICE))
    as_admin = await http.post("/tasks", json=task, headers=key(ADMIN))

    for problem in (as_client.json(), in_batch.json()["results"][0]["error"]):
        assert "known" not in problem
        assert "no-such-type" in str(problem)
        assert "resize" not in str(problem)
    assert as_client.status_code == as_admin.status_code == 422
    assert as_client.json()["detail"] == "unknown task type 'no-such-type'"
    assert set(as_admin.json()["known"]) == {"echo", "explode", "resize"}


async def test_a_failed_task_shows_its_owner_the_error_and_only_an_admin_the_traceback(
    http: httpx.AsyncClient, app: Spillway
) -> None:
    task_id = await submit(http, ALICE, {"type": "explode", "payload": {"message": "boom"}})
    await drain(app, task_id)

    as_owner = await http.get(f"/tasks/{task_id}", headers=key(ALICE))
    assert as_owner.json()["status"] == "dead"
    assert as_owner.json()["error"] == "RuntimeError: boom"
    assert "Traceback" not in as_owner.text
    assert ".py" not in as_owner.text
    dead = (await http.get("/dlq?queue=risky", headers=key(ADMIN))).json()["dead_letters"]
    traceback = next(d["traceback"] for d in dead if d["id"] == task_id)
    assert "Traceback" in traceback
    assert "sample_app.py" in traceback


async def test_why_a_record_is_unreadable_is_for_admins(
    http: httpx.AsyncClient, app: Spillway, server: ApiServer
) -> None:
    task_id = await submit(http, ALICE)
    await poison(app, server, task_id, "attempts", "-3")

    as_owner = await http.get(f"/tasks/{task_id}", headers=key(ALICE))
    as_admin = await http.get(f"/tasks/{task_id}", headers=key(ADMIN))

    assert as_owner.status_code == as_admin.status_code == 409
    assert "reason" not in as_owner.json()
    assert "attempts" not in as_owner.text
    assert "field 'attempts' is malformed" in as_admin.json()["reason"]
    not_found(await http.get(f"/tasks/{task_id}", headers=key(BOB)), task_id)


async def test_no_key_reaches_the_log(
    http: httpx.AsyncClient, app: Spillway, server: ApiServer
) -> None:
    task_id = await submit(http, ALICE)
    await poison(app, server, task_id, "status", "?")
    wrong = "wrong-key-5be1"
    for value in (ALICE, ADMIN, wrong):
        await http.post("/tasks", json=TASK, headers=key(value))
        await http.get("/stats", headers={"X-API-Key": value})
        await http.get(f"/tasks/{task_id}", headers=key(value))  # logs a warning

    log = server.log()
    assert f"task {task_id}: its record cannot be read" in log
    for value in (ALICE, BOB, ADMIN, wrong):
        assert value not in log


def test_keys_are_held_only_as_digests() -> None:
    auth = Auth([SecretStr(ALICE)], admin_keys=[SecretStr(ADMIN)])

    held = repr(vars(auth)).encode() + b"".join(digest for digest, _ in auth._keys)
    assert ALICE.encode() not in held
    assert ADMIN.encode() not in held
    caller = auth.identify([(b"authorization", f"Bearer {ADMIN}".encode())])
    assert caller.admin
    assert not auth.identify([(b"x-api-key", ALICE.encode())]).admin


def test_without_keys_every_caller_is_an_admin() -> None:
    assert Auth([]).identify([]).admin
