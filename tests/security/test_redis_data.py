"""Issue 17: data in Redis that Spillway did not write (or that was damaged) is not trusted.

Hypothesis writes task records, stream entries, dead letters, heartbeats, counters and due-set
members with missing or malformed fields into a real Redis under the test's key prefix; then a
burst worker must drain without raising, the application's reads must answer or raise only
Spillway's own errors, and the API's reads must answer without a 5xx. docs/security.md
("Poisoned Redis data") lists each input and what Spillway does with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.typing import EncodableT, FieldT
from tests.engine import Item, stream_key

from spillway import RecordUnreadable, Settings, Spillway, SpillwayError, Worker
from spillway.api.app import create_app
from spillway.broker.keys import new_task_id

SECRET = "hunter2-payload-secret"  # noqa: S105  # a payload value the logs must not show
VALID_POLICY = "1|5.0|0.01|0.02"
#: Values a hand-written or damaged field is likely to hold, besides random text and bytes.
HOSTILE = [
    "", "0", "-1", "nan", "inf", "1e400", "9" * 40, "{", "null", "[]", '{"n": "x"}',
    f'{{"secret": "{SECRET}"', "x|y|z|w", "1|2|3", "-5|30|0.1|1", "1|nan|0.1|1", "1|inf|0|0",
    "0|0|0|0", "1|1e300|1|1", "1_0|1|0.1|1", "queued", "running", "dead", "succeeded", "failed",
    "cancelled", "RUNNING", "0-1", "not-an-entry-id", "99999999999999-0",
]  # fmt: skip
values = st.one_of(
    st.sampled_from(HOSTILE), st.text(max_size=12), st.binary(max_size=12), st.integers()
)
RECORD_FIELDS = [
    "id", "type", "queue", "status", "policy", "payload", "result", "attempts", "prior_attempts",
    "created_at", "started_at", "finished_at", "due_at", "error", "dead_letter",
]  # fmt: skip
DEAD_FIELDS = ["id", "type", "queue", "payload", "error", "traceback", "attempts", "policy",
               "created_at", "failed_at"]  # fmt: skip
WORKER_FIELDS = ["name", "host", "pid", "queues", "concurrency", "in_flight", "processed",
                 "started_at", "last_seen"]  # fmt: skip


def fields(names: list[str], sane: dict[str, str]) -> st.SearchStrategy[dict[FieldT, EncodableT]]:
    """Each field missing, sane, or hostile: mostly sane, so the damage reaches deep code."""
    one = {n: st.one_of(st.just(None), st.just(sane.get(n, "")), values) for n in names}
    return st.fixed_dictionaries(one).map(lambda d: {k: v for k, v in d.items() if v is not None})


@dataclass
class Poison:
    """What one example writes into Redis."""

    record: dict[FieldT, EncodableT]
    queued: bool  # the record gets a stream entry, pointed at by its `entry` field
    due: bool  # its id is also in the due set, due now
    entries: list[dict[FieldT, EncodableT]] = field(default_factory=list)  # entries not naming it
    dead: list[dict[FieldT, EncodableT]] = field(default_factory=list)
    heartbeat: dict[FieldT, EncodableT] = field(default_factory=dict)
    counters: dict[FieldT, EncodableT] = field(default_factory=dict)
    foreign_ids: list[str] = field(default_factory=list)  # due-set members of no record


def poisons(count: int) -> list[Poison]:
    """`count` examples drawn by Hypothesis (generated up front: the checks below are async)."""
    sane_record = {"type": "work", "queue": "default", "status": "queued",
                   "policy": VALID_POLICY, "payload": '{"n": 1}', "attempts": "0",
                   "created_at": str(int(time.time() * 1000))}  # fmt: skip
    sane_dead = {"type": "work", "queue": "default", "payload": '{"n": 2}', "error": "E",
                 "traceback": "", "attempts": "1", "policy": VALID_POLICY,
                 "created_at": "1", "failed_at": "2"}  # fmt: skip
    sane_worker = {"name": "w", "host": "h", "pid": "1", "queues": "default",
                   "concurrency": "1", "in_flight": "0", "processed": "0",
                   "started_at": "1", "last_seen": "2"}  # fmt: skip
    example = st.builds(
        Poison,
        record=fields(RECORD_FIELDS, sane_record),
        queued=st.booleans(),
        due=st.booleans(),
        entries=st.lists(st.dictionaries(st.text(max_size=4), values, max_size=3), max_size=2),
        dead=st.lists(fields(DEAD_FIELDS, sane_dead), max_size=2),
        heartbeat=fields(WORKER_FIELDS, sane_worker),
        counters=st.dictionaries(st.text(max_size=8), values, max_size=3),
        foreign_ids=st.lists(st.text(max_size=8), max_size=2),
    )
    out: list[Poison] = []

    # The same examples every run, so CI is repeatable; SPILLWAY_FUZZ_RANDOM=1 draws new ones
    # (each bug found that way gets a test of its own below).
    @hsettings(
        max_examples=count, database=None, phases=[Phase.generate], deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=os.environ.get("SPILLWAY_FUZZ_RANDOM") != "1",
    )  # fmt: skip
    @given(example)
    def collect(p: Poison) -> None:
        out.append(p)

    collect()
    return out


async def write(app: Spillway, redis: aioredis.Redis, p: Poison, task_id: str) -> None:
    """Write one example under the app's prefix, as a careless operator or a bug might."""
    shard = app.broker.keys.for_task(task_id)
    zero = app.broker.keys.shard(0)
    record = {"id": task_id, **p.record} if "id" not in p.record else dict(p.record)
    if p.queued:
        entry = await redis.xadd(shard.stream("default"), {"id": task_id})
        record["entry"] = entry
    if record:
        await redis.hset(shard.task(task_id), mapping=record)
    now = int(time.time() * 1000)
    if p.due:
        await redis.zadd(shard.due("default"), {task_id: now - 1})
    for foreign in p.foreign_ids:
        await redis.zadd(zero.due("default"), {foreign: now - 1})
    for e in p.entries:
        await redis.xadd(stream_key(app), e or {"x": ""})
    for d in p.dead:
        await redis.xadd(shard.dead("default"), d or {"x": ""})
    if p.heartbeat:
        await redis.hset(app.broker.keys.worker("poisoned"), mapping=p.heartbeat)
        await redis.zadd(app.broker.keys.workers, {"poisoned": now})
    if p.counters:
        await redis.hset(zero.counters, mapping=p.counters)


async def reads_answer(app: Spillway, http: httpx.AsyncClient, task_id: str) -> None:
    """Every read answers: the app's with a value or a Spillway error, the API's without 5xx."""
    for read in (app.get(task_id), app.dead_letters(), app.stats()):
        with contextlib.suppress(SpillwayError):
            await read
    for path in (f"/tasks/{task_id}", "/dlq", "/stats", "/dashboard/state"):
        response = await http.get(path)
        assert response.status_code < 500, (path, response.text)


async def test_poisoned_records_entries_and_heartbeats_never_stop_a_worker_or_a_page(
    settings: Settings, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for p in poisons(30):
        app = Spillway(settings.model_copy(update={"prefix": f"p{uuid.uuid4().hex[:8]}"}))

        @app.task(max_retries=0, timeout=2.0)
        async def work(item: Item) -> int:
            return item.n

        task_id = new_task_id()
        transport = httpx.ASGITransport(app=create_app(app))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                await app.connect()
                await write(app, redis, p, task_id)
                await reads_answer(app, http, task_id)
                await asyncio.wait_for(Worker(app, burst=True).run(), 10)
                await reads_answer(app, http, task_id)
                replay = await http.post(f"/dlq/{task_id}/replay")
                assert replay.status_code in (202, 404), replay.text
        finally:
            await app.close()
    assert SECRET not in caplog.text  # logs name the record and the field, never the payload


# --- the cases the fuzzer finds, one by one --------------------------------------------------


async def inject(app: Spillway, redis: aioredis.Redis, **fields: str) -> str:
    """A queued task whose record holds `fields` over the sane ones, with its stream entry."""
    task_id = new_task_id()
    shard = app.broker.keys.for_task(task_id)
    await app.connect()
    entry = await redis.xadd(shard.stream("default"), {"id": task_id})
    record: dict[FieldT, EncodableT] = {"id": task_id, "type": "work", "queue": "default",
                                        "status": "queued", "policy": VALID_POLICY,
                                        "payload": '{"n": 1}', "entry": entry}  # fmt: skip
    record.update(fields)
    await redis.hset(shard.task(task_id), mapping=record)
    return task_id


@pytest.fixture
def work_app(app: Spillway) -> Spillway:
    @app.task(max_retries=0)
    async def work(item: Item) -> int:
        return item.n

    return app


@pytest.mark.parametrize("policy", ["x|y|z|w", "1|nan|0.1|1", "-1|30|0.1|1", "1|1e300|0|0", ""])
async def test_a_task_whose_policy_is_malformed_is_dead_lettered_unrun_and_named_in_the_log(
    work_app: Spillway,
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    policy: str,
) -> None:
    task_id = await inject(work_app, redis, policy=policy)
    sane = await work_app.enqueue("work", {"n": 7})

    await asyncio.wait_for(Worker(work_app, burst=True).run(), 10)

    assert (await work_app.get(sane)).result == 7  # the batch it came in with still ran
    dead = await work_app.dead_letters()
    assert [(d.id, d.error.split(":")[0]) for d in dead] == [(task_id, "PolicyInvalid")]
    assert f"task {task_id}: its record's policy is malformed" in caplog.text


async def test_a_record_missing_its_type_and_payload_is_dead_lettered(
    work_app: Spillway, redis: aioredis.Redis
) -> None:
    task_id = await inject(work_app, redis)
    await redis.hdel(work_app.broker.keys.for_task(task_id).task(task_id), "type", "payload")

    await asyncio.wait_for(Worker(work_app, burst=True).run(), 10)

    assert [d.error for d in await work_app.dead_letters()] == [
        "UnknownTaskType: no handler for ''"
    ]


@pytest.mark.parametrize("value", ["", "0", "no", "\u00e9" * 1000])
async def test_a_waited_mark_spillway_did_not_write_only_publishes_the_end(
    work_app: Spillway, redis: aioredis.Redis, value: str
) -> None:
    # finish.lua tests 'waited' (wait.lua's mark) for presence only: whatever it holds, the
    # task runs once and ends as usual, and its end is published on its channel.
    task_id = await inject(work_app, redis, waited=value)
    pubsub = redis.pubsub()
    channel = work_app.broker.keys.for_task(task_id).channel(task_id)
    await pubsub.subscribe(channel)

    await asyncio.wait_for(Worker(work_app, burst=True).run(), 10)

    record = await work_app.get(task_id)
    assert (record.status.value, record.attempts, record.result) == ("succeeded", 1, 1)
    messages: list[dict[str, Any]] = []
    while len(messages) < 2:  # the subscription's confirmation, then the end
        message = await pubsub.get_message(timeout=5)
        assert message is not None
        messages.append(message)
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert str(messages[1]["data"]) == "succeeded"


@pytest.mark.parametrize(
    ("field", "value"),
    [("status", "paused"), ("payload", f'{{"secret": "{SECRET}"'), ("created_at", "soon"),
     ("due_at", "1" * 30), ("attempts", "-3"), ("policy", "1|2"), ("id", "0" * 32)],
)  # fmt: skip
async def test_an_unreadable_record_answers_a_problem_naming_its_field(
    work_app: Spillway,
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    field: str,
    value: str,
) -> None:
    task_id = await inject(work_app, redis, **{field: value})
    transport = httpx.ASGITransport(app=create_app(work_app))

    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get(f"/tasks/{task_id}")

    assert response.status_code == 409
    problem = response.json()
    assert problem["type"] == "urn:spillway:problem:record-unreadable"
    assert problem["task_id"] == task_id
    assert f"field {field!r}" in problem["reason"]
    assert SECRET not in response.text
    assert SECRET not in caplog.text
    assert f"task {task_id}: its record cannot be read" in caplog.text


async def test_a_key_of_another_type_under_a_task_id_is_an_unreadable_record(
    work_app: Spillway, redis: aioredis.Redis
) -> None:
    task_id = new_task_id()
    await work_app.connect()
    await redis.set(work_app.broker.keys.for_task(task_id).task(task_id), "not a hash")
    await redis.xadd(stream_key(work_app), {"id": task_id})

    await asyncio.wait_for(Worker(work_app, burst=True).run(), 10)

    with pytest.raises(SpillwayError, match="another type"):
        await work_app.get(task_id)


async def test_the_dead_letter_list_skips_an_unreadable_entry_and_names_it(
    work_app: Spillway, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await work_app.connect()
    dead = work_app.broker.keys.shard(0).dead("default")
    bad = await redis.xadd(dead, {"id": "a", "payload": f'{{"secret": "{SECRET}"'})
    good = await redis.xadd(dead, {"id": "b", "payload": "{}", "attempts": "1"})

    listed = await work_app.dead_letters()

    assert [d.dead_letter_id for d in listed] == [good]
    assert f"skipping dead letter {bad!s} of {dead}: field 'payload' is malformed" in caplog.text
    assert SECRET not in caplog.text


async def test_a_malformed_heartbeat_or_counter_is_left_out_of_the_stats(
    work_app: Spillway, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await work_app.connect()
    keys = work_app.broker.keys
    await redis.hset(keys.worker("w1"), mapping={"name": "w1", "pid": "many"})
    await redis.zadd(keys.workers, {"w1": int(time.time() * 1000)})
    await redis.hset(keys.shard(0).counters, mapping={"work|succeeded": "lots", "work|dead": 2})

    stats = await work_app.stats()

    assert stats.workers == []
    assert stats.counts == {"work": {"dead": 2}}
    assert f"skipping heartbeat {keys.worker('w1')}: field 'host' is missing" in caplog.text
    assert "skipping counter 'work|succeeded'" in caplog.text


async def test_a_stale_dead_letter_index_entry_replays_nothing(
    work_app: Spillway, redis: aioredis.Redis
) -> None:
    task_id = new_task_id()
    await work_app.connect()
    index = work_app.broker.keys.for_task(task_id).dead_index("default")
    await redis.hset(index, task_id, "1-1")

    assert await work_app.replay(task_id) is False
    assert await redis.hexists(index, task_id) == 0  # the stale entry is dropped


async def test_a_record_without_its_policy_is_unreadable_not_a_crash(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Found by the fuzzer: a record lacking only `policy` raised AttributeError from `get`."""
    app = Spillway(settings)
    task_id = new_task_id()
    key = app.broker.keys.for_task(task_id).task(task_id)
    await redis.hset(key, mapping={"id": task_id, "type": "t", "queue": "default",
                                   "status": "queued", "payload": "{}"})  # fmt: skip
    try:
        with pytest.raises(RecordUnreadable, match="policy"):
            await app.get(task_id)
    finally:
        await app.close()


async def test_a_counter_past_redis_s_integers_is_skipped_not_a_500(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Found by the fuzzer: a counter of 10**40 made `/stats` answer 500 (not JSON-encodable)."""
    app = Spillway(settings)
    counters = app.broker.keys.shard(0).counters
    await redis.hset(counters, mapping={"t|succeeded": str(10**40), "t|dead": "2"})
    transport = httpx.ASGITransport(app=create_app(app))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            answer = await http.get("/stats")
        assert answer.status_code == 200
        assert answer.json()["counts"] == {"t": {"dead": 2}}
    finally:
        await app.close()
