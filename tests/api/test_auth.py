"""API keys: checked on the headers before any body is read; idempotency scoped per key."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from tests.api.conftest import ADMIN_KEY
from tests.api.servers import ApiServer

TASK = {"type": "echo", "payload": {"n": 1}}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "key-three"},
        {"Authorization": "key-one"},
    ],
    ids=["none", "wrong-bearer", "wrong-header", "no-scheme"],
)
async def test_requests_without_a_valid_key_are_401(
    secured_server: ApiServer, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=secured_server.url, headers=headers) as http:
        for response in (await http.post("/tasks", json=TASK), await http.get("/stats")):
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["type"] == "urn:spillway:problem:unauthorized"


@pytest.mark.parametrize(
    ("name", "value"),
    [("Authorization", "Bearer {}"), ("X-API-Key", "{}")],
    ids=["bearer", "x-api-key"],
)
async def test_every_key_in_either_header_is_accepted(
    secured_server: ApiServer, name: str, value: str
) -> None:
    async with httpx.AsyncClient(base_url=secured_server.url) as http:
        for key in ("key-one", "key-two", ADMIN_KEY):
            headers = {name: value.format(key)}
            assert (await http.post("/tasks", json=TASK, headers=headers)).status_code == 202
            # /stats is an admin's: a client key is known (403), not refused as unknown (401).
            stats = await http.get("/stats", headers=headers)
            assert stats.status_code == (200 if key == ADMIN_KEY else 403), key


async def test_probes_and_the_api_description_need_no_key(secured_server: ApiServer) -> None:
    async with httpx.AsyncClient(base_url=secured_server.url) as http:
        for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            assert (await http.get(path)).status_code == 200, path
        doc = (await http.get("/openapi.json")).json()

    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}


async def test_key_is_checked_before_the_body_is_read(secured_server: ApiServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", secured_server.port)
    try:
        writer.write(
            b"POST /tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )  # and no body at all
        async with asyncio.timeout(5):
            answer = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()

    assert answer.startswith(b"HTTP/1.1 401 ")


async def test_idempotency_keys_are_scoped_per_api_key(secured_server: ApiServer) -> None:
    ids = []
    for key in ("key-one", "key-two", "key-one"):
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "shared-key"}
        async with httpx.AsyncClient(base_url=secured_server.url, headers=headers) as http:
            ids.append((await http.post("/tasks", json=TASK)).json()["task_id"])

    assert ids[0] == ids[2]
    assert ids[0] != ids[1]
