"""Callers over HTTP, through a real server: the tenant header names the caller, a caller over
its quota gets a 429 of its own (with a paced Retry-After) while other callers get in, and a
tenant header that is malformed or sent twice is refused before anything is written."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tests.api.servers import ApiServer, drain, serving

from spillway import TaskStatus
from spillway.embedded import EmbeddedRedis

TASK = {"type": "echo", "payload": {"n": 1}}
#: A lane's backlog of 50, a tenth of it per caller: 5 waiting tasks each.
ENV = {
    "SPILLWAY_FAIR_CALLERS": "true",
    "SPILLWAY_CALLER_QUOTA": "0.1",
    "SPILLWAY_BACKLOG_LIMIT": "50",
    "SPILLWAY_TENANT_HEADER": "X-Tenant",
}


@pytest.fixture
def server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    yield from serving(redis_server.url, tmp_path_factory.mktemp("api"), ENV)


def post(http: httpx.Client, tenant: str | None, **headers: str) -> httpx.Response:
    if tenant is not None:
        headers["X-Tenant"] = tenant
    return http.post("/tasks", json=TASK, headers=headers)


async def test_a_tenant_over_its_quota_is_refused_alone(server: ApiServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        # No worker runs: the first task finds the lane idle and is queued at once, the next
        # five wait as big's, and the seventh is over big's quota.
        big = [post(http, "big") for _ in range(7)]
        assert [r.status_code for r in big] == [202] * 6 + [429]
        refusal = big[-1]
        assert refusal.headers["content-type"] == "application/problem+json"
        assert refusal.json()["type"] == "urn:spillway:problem:caller-quota"
        assert refusal.json()["queue"] == "default"
        assert 1 <= int(refusal.headers["retry-after"]) <= 60
        # Others are not refused for big's flood: another tenant, and a request without one.
        small = [post(http, "small") for _ in range(5)]
        assert {r.status_code for r in small} == {202}
        assert post(http, None).status_code == 202
        accepted = [r.json()["task_id"] for r in [*big[:6], *small]]

    app = server.spillway()
    try:
        await drain(app, *accepted)
        for task_id in accepted:
            assert (await app.get(task_id)).status == TaskStatus.SUCCEEDED
    finally:
        await app.close()


@pytest.mark.parametrize("tenant", ["", "a b", "x" * 65, "ünï", "a;b"])
def test_a_malformed_tenant_header_is_refused_and_writes_nothing(
    server: ApiServer, tenant: str
) -> None:
    with httpx.Client(base_url=server.url) as http:
        answer = http.post("/tasks", json=TASK, headers=[(b"X-Tenant", tenant.encode("utf-8"))])
        assert answer.status_code == 400
        assert "tenant" in answer.json()["detail"]
        assert http.get("/stats").json()["queues"][0]["backlog"] == 0


def test_a_tenant_header_sent_twice_is_refused(server: ApiServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        answer = http.post("/tasks", json=TASK, headers=[("X-Tenant", "a"), ("X-Tenant", "b")])
        assert answer.status_code == 400
        assert "more than once" in answer.json()["detail"]
        batch = http.post(
            "/tasks/batch", json={"tasks": [TASK]}, headers=[("X-Tenant", "a"), ("X-Tenant", "b")]
        )
        assert batch.status_code == 400
