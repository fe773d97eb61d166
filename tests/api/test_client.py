"""`spillway.Client` and `spillway.AsyncClient` against a real server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from tests.api.servers import ApiServer, drain

from spillway import (
    AsyncClient,
    BacklogFull,
    Client,
    EnqueueItem,
    IdempotencyConflict,
    PayloadInvalid,
    ResultTimeout,
    Spillway,
    SpillwayError,
    TaskFailed,
    TaskNotCancellable,
    TaskNotFound,
    UnknownTaskType,
)
from spillway.api.problems import PROBLEM_PREFIX, SLUGS
from spillway.client import RequestRejected, error_from_problem

RESIZE = {"url": "https://example.com/cat.jpg", "width": 3, "height": 4}


def test_client_submits_reads_and_cancels(api_server: ApiServer) -> None:
    with Client(api_server.url) as client:
        task_id = client.submit("resize", RESIZE, delay=30, max_retries=1, timeout=5)
        record = client.get(task_id)
        cancelled = client.cancel(task_id)

    assert (record.id, record.type, record.status, record.max_retries) == (
        task_id, "resize", "queued", 1,
    )  # fmt: skip
    assert cancelled.status == "cancelled"


def test_client_sends_an_expiry_as_seconds(api_server: ApiServer) -> None:
    with Client(api_server.url) as client:
        task_id = client.submit("resize", RESIZE, expires=timedelta(minutes=2))
        batch = client.submit_many([EnqueueItem("resize", RESIZE, expires=45)])
        records = [client.get(task_id), client.get(batch[0].task_id or "")]

    for record, seconds in zip(records, (120, 45), strict=True):
        assert record.created_at is not None
        assert record.expires_at is not None
        assert (record.expires_at - record.created_at).total_seconds() == seconds


def test_client_raises_the_servers_errors(api_server: ApiServer) -> None:
    with Client(api_server.url) as client:
        with pytest.raises(UnknownTaskType) as unknown:
            client.submit("nope", {})
        with pytest.raises(PayloadInvalid) as invalid:
            client.submit("resize", {**RESIZE, "width": -1})
        with pytest.raises(TaskNotFound):
            client.get("0" * 32)
        client.submit("echo", {"n": 1}, idempotency_key="client-key")
        with pytest.raises(IdempotencyConflict):
            client.submit("echo", {"n": 2}, idempotency_key="client-key")

    assert unknown.value.known == ["echo", "explode", "resize"]
    assert invalid.value.errors[0]["loc"] == ["body", "payload", "width"]


def test_client_reports_refusals_of_http_itself(secured_server: ApiServer) -> None:
    with Client(secured_server.url, api_key="wrong") as client, pytest.raises(RequestRejected) as e:
        client.submit("echo", {})
    with Client(secured_server.url, api_key="key-one") as client:
        task_id = client.submit("echo", {})

    assert e.value.status == 401
    assert len(task_id) == 32


def test_client_raises_backlog_full_with_retry_after(tight_server: ApiServer) -> None:
    app = tight_server.spillway()
    asyncio.run(_drain_and_close(app))
    try:
        with Client(tight_server.url) as client:
            for n in range(3):
                client.submit("echo", {"n": n})
            with pytest.raises(BacklogFull) as full:
                client.submit("echo", {"n": 3})
    finally:
        asyncio.run(_drain_and_close(tight_server.spillway()))

    assert 1 <= full.value.retry_after <= 60  # the server's Retry-After, within its bounds


async def _drain_and_close(app: Spillway) -> None:
    await drain(app)
    await app.close()


async def test_async_client_waits_for_the_result(api_server: ApiServer, spillway: Spillway) -> None:
    async with AsyncClient(api_server.url) as client:
        task_id = await client.submit("resize", RESIZE)
        waiting = asyncio.create_task(client.result(task_id, timeout=30))
        await drain(spillway, task_id)
        result = await waiting
        with pytest.raises(TaskNotCancellable):
            await client.cancel(task_id)

    assert result == {"pixels": 12}


async def test_async_client_wait_times_out_and_result_raises_for_dead_tasks(
    api_server: ApiServer, spillway: Spillway
) -> None:
    async with AsyncClient(api_server.url) as client:
        queued = await client.submit("echo", {"n": 1})
        with pytest.raises(ResultTimeout):
            await client.wait(queued, timeout=0.2)
        doomed = await client.submit("explode", {"message": "no"})
        await drain(spillway, doomed)
        with pytest.raises(TaskFailed) as failed:
            await client.result(doomed, timeout=5)

    assert failed.value.status == "dead"


async def test_async_client_submits_many_in_one_request(api_server: ApiServer) -> None:
    async with AsyncClient(api_server.url) as client:
        results = await client.submit_many(
            [("resize", RESIZE), EnqueueItem("resize", {}), EnqueueItem("echo", {}, delay=5)]
        )
        record = await client.get(results[2].task_id or "")

    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, PayloadInvalid)
    assert record.due_at is not None


@pytest.mark.parametrize("slug", sorted(SLUGS))
def test_every_problem_the_api_answers_becomes_a_spillway_error(slug: str) -> None:
    problem = {"type": PROBLEM_PREFIX + slug, "title": "t", "status": 400, "detail": "d"}

    error = error_from_problem(400, problem)

    assert isinstance(error, SpillwayError)
    generic = {"bad-request", "invalid-json", "unsupported-json", "payload-too-large",
               "request-timeout", "request-header-too-large", "unsupported-media-type",
               "unauthorized", "forbidden", "cross-site-request", "host-not-allowed",
               "request-invalid", "internal-error", "result-timeout", "task-failed"}  # fmt: skip
    assert isinstance(error, RequestRejected) == (slug in generic)
