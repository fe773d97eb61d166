"""Issue 22, part 3: OpenTelemetry from the request that submits a task to each attempt.

The worker side records with the SDK's in-memory exporter; the cross-process test runs a real
API server whose process has the SDK configured (`tests.api.traced_app`), and reads its spans
from the file it writes. No test sets the global tracer provider: every other test runs
untraced, as an application without a provider does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tests.api.sample_app import build
from tests.api.servers import ApiServer, drain
from tests.engine import Item

from spillway import Retry, Settings, Spillway, Worker
from spillway.api.app import create_app

#: A caller's own span, as a client would send it (W3C trace context).
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def hex_trace(span: ReadableSpan) -> str:
    return f"{span.context.trace_id:032x}"


def read_spans(folder: Path) -> list[dict[str, Any]]:
    """The spans the traced API processes wrote (JSON lines, one file per process)."""
    lines = [line for f in folder.glob("api.*.jsonl") for line in f.read_text().splitlines()]
    return [json.loads(line) for line in lines if line]


def named(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


async def test_one_request_yields_one_connected_trace_across_the_api_and_worker_processes(
    redis_server: Any, tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    api = ApiServer(
        redis_server.url,
        {"SPILLWAY_TEST_SPANS": str(tmp_path / "api")},
        app_ref="tests.api.traced_app:app",
    ).start(tmp_path)
    app = build(api.settings, tracer_provider=provider)  # the worker's process: this one
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            submit = {"type": "echo", "payload": {"hello": "trace"}}
            accepted = await http.post("/tasks", json=submit, headers={"traceparent": TRACEPARENT})
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["task_id"]
            # A malformed traceparent is ignored: accepted, and the send span starts a trace.
            hostile = {"traceparent": "00-" + "z" * 32 + "-" + "0" * 16 + "-01" + "x" * 5000}
            other = await http.post("/tasks", json=submit, headers=hostile)
            assert other.status_code == 202, other.text
        await drain(app, task_id, other.json()["task_id"])
    finally:
        await app.close()
        api.stop()

    exported = read_spans(tmp_path)
    sent = [s for s in exported if s["kind"] == "SpanKind.PRODUCER"]
    assert len(sent) == 2
    send = next(s for s in sent if s["attributes"].get("messaging.message.id") == task_id)
    assert send["name"] == "send default"
    assert send["kind"] == "SpanKind.PRODUCER"
    assert send["context"]["trace_id"] == f"0x{CLIENT_TRACE}"  # the caller's trace goes on
    assert send["parent_id"] == f"0x{CLIENT_SPAN}"
    assert send["attributes"]["messaging.system"] == "spillway"
    stray = next(s for s in sent if s["attributes"].get("messaging.message.id") != task_id)
    assert stray["parent_id"] is None  # the hostile header started nothing of its own

    runs = [s for s in exporter.get_finished_spans() if s.name == "process default"]
    run = next(s for s in runs if s.attributes and s.attributes["messaging.message.id"] == task_id)
    assert run.kind is SpanKind.CONSUMER
    assert hex_trace(run) == CLIENT_TRACE  # one trace: client, API process, worker process
    assert run.parent is not None
    assert f"0x{run.parent.span_id:016x}" == send["context"]["span_id"]
    assert [f"0x{link.context.span_id:016x}" for link in run.links] == [send["context"]["span_id"]]
    assert run.attributes is not None
    assert run.attributes["spillway.task.attempt"] == 1
    assert run.attributes["spillway.task.outcome"] == "succeeded"
    assert run.status.status_code is StatusCode.UNSET


async def test_each_attempt_is_a_span_with_its_retry_or_dead_letter_and_the_handlers_spans_within(
    settings: Settings, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    app = Spillway(settings, tracer_provider=provider)
    handler_tracer = provider.get_tracer("handler")

    @app.task(max_retries=2, retry_base=0.01, retry_cap=0.01)
    def flaky(item: Item) -> None:  # a sync handler: run on the worker's thread pool
        with handler_tracer.start_as_current_span("query"):
            raise Retry(after=0.01)

    try:
        caller = provider.get_tracer("caller")
        with caller.start_as_current_span("checkout") as checkout:
            task_id = await app.enqueue("flaky", {"n": 1})
        await asyncio.wait_for(Worker(app, burst=True).run(), 10)
        record = await app.wait(task_id, 5)
        assert record.status.value == "dead"
    finally:
        await app.close()

    finished = exporter.get_finished_spans()
    (send,) = named(finished, "send default")
    assert send.parent is not None
    assert send.parent.span_id == checkout.get_span_context().span_id  # the current span
    attempts = sorted(named(finished, "process default"), key=lambda s: s.start_time or 0)
    assert len(attempts) == 3
    assert {s.context.trace_id for s in [send, *attempts]} == {send.context.trace_id}
    events = [[e.name for e in s.events] for s in attempts]
    assert events == [["exception", "retry"], ["exception", "retry"], ["exception", "dead_letter"]]
    assert all(s.status.status_code is StatusCode.ERROR for s in attempts)
    for attempt in attempts:
        assert attempt.parent is not None
        assert attempt.parent.span_id == send.context.span_id
    # The handler's own spans are children of the attempt that ran them, thread pool or not.
    queries = named(finished, "query")
    assert sorted(q.parent.span_id for q in queries if q.parent) == sorted(
        a.context.span_id for a in attempts
    )
    (wait,) = named(finished, "wait")
    assert wait.attributes is not None
    assert wait.attributes["spillway.task.status"] == "dead"


async def test_a_batch_is_one_send_span_and_each_of_its_tasks_carries_it(
    settings: Settings, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    app = build(settings, tracer_provider=provider)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(app)), base_url="http://t"
        ) as http:
            tasks = [{"type": "echo", "payload": {"n": i}} for i in range(3)]
            tasks.append({"type": "nope", "payload": {}})
            response = await http.post("/tasks/batch", json={"tasks": tasks})
            assert response.json()["accepted"] == 3, response.text
        await asyncio.wait_for(Worker(app, burst=True).run(), 10)
    finally:
        await app.close()
    finished = exporter.get_finished_spans()
    (send,) = named(finished, "send")
    assert send.attributes is not None
    assert send.attributes["messaging.batch.message_count"] == 3
    runs = named(finished, "process default")
    assert len(runs) == 3
    assert {r.parent.span_id for r in runs if r.parent} == {send.context.span_id}


async def test_tracing_is_off_without_a_provider_or_when_the_setting_says_so(
    settings: Settings, redis: aioredis.Redis, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)  # nothing global
    for app in (
        Spillway(settings),
        Spillway(settings.model_copy(update={"tracing": False}), tracer_provider=provider),
    ):

        @app.task
        async def job(item: Item) -> None:
            return None

        try:
            task_id = await app.enqueue("job", {"n": 1})
            assert not app.tracing.enabled
            record = app.broker.keys.for_task(task_id).task(task_id)
            assert await redis.hget(record, "trace") is None  # not a byte more per task
        finally:
            await app.close()
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    "hostile",
    [
        "garbage",
        "00-" + "0" * 32 + "-" + "0" * 16 + "-01",  # well-formed, but the invalid all-zero ids
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # a version we do not know
        f"{TRACEPARENT}\n{TRACEPARENT}",
        "x" * 10_000,
    ],
)
async def test_a_hostile_trace_field_in_redis_starts_a_trace_of_its_own(
    settings: Settings,
    redis: aioredis.Redis,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    hostile: str,
) -> None:
    provider, exporter = spans
    app = Spillway(settings, tracer_provider=provider)

    @app.task
    async def job(item: Item) -> int:
        return item.n

    try:
        task_id = await app.enqueue("job", {"n": 5})
        await redis.hset(app.broker.keys.for_task(task_id).task(task_id), "trace", hostile)
        await asyncio.wait_for(Worker(app, burst=True).run(), 10)
        assert (await app.get(task_id)).result == 5  # it ran as any task does
    finally:
        await app.close()
    (run,) = named(exporter.get_finished_spans(), "process default")
    assert run.parent is None
    assert run.links == ()
