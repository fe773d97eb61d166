"""The drain-rate sampler against a real Redis (a cluster too, under `make test-cluster`)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from tests.engine import Item, drain

from spillway import BacklogFull, Settings, Spillway
from spillway.broker.drain import _figures


async def test_a_sample_counts_each_lanes_backlog_and_what_left_its_streams(
    settings: Settings,
) -> None:
    app = Spillway(settings.model_copy(update={"shards": 3}))

    @app.task
    async def job(item: Item) -> int:
        return item.n

    @app.task(queue="other")
    async def later(item: Item) -> int:
        return item.n

    try:
        await app.enqueue_many([("job", {"n": i}) for i in range(5)])
        await drain(app, queues=["default"])
        await app.enqueue_many([("job", {"n": i}) for i in range(2)])
        await app.enqueue("job", {"n": 9}, delay=60)  # in the due set: backlog, not drained
        await app.enqueue("later", {"n": 1})

        sample = await app.broker.drain.sample()
    finally:
        await app.close()

    assert sample["default"] == (3, 5)
    assert sample["other"] == (1, 0)
    assert sample["default#high"] == (0, 0)  # never used: no stream yet, or an empty one


async def test_a_key_of_another_type_is_skipped_and_logged_once_not_a_crash(
    app: Spillway, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task
    async def job(item: Item) -> int:
        return item.n

    @app.task(queue="other")
    async def later(item: Item) -> int:
        return item.n

    await app.connect()
    await app.enqueue("later", {"n": 1})
    stream = app.broker.keys.shard(0).stream("default")
    await redis.delete(stream)
    await redis.set(stream, "not a stream")
    with caplog.at_level(logging.WARNING, "spillway.broker"):
        first = await app.broker.drain.sample()
        second = await app.broker.drain.sample()

    assert "default" not in first
    assert first["other"] == second["other"] == (1, 0)
    assert [r.message for r in caplog.records].count(
        f"drain rate: skipping {stream}: cannot be read: "
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    ) == 1


@pytest.mark.parametrize(
    ("info", "due", "why"),
    [
        ({"length": "many", "entries-added": 3}, 0, "a figure is not a count"),
        ({"length": 1, "entries-added": -4}, 0, "a figure is not a count"),
        ({"length": 1, "entries-added": 3}, 1.5, "a figure is not a count"),
        ({"length": 1}, 0, "no entries-added (Redis < 7.0): its drain rate is not measured"),
        (["length", 1], 0, "XINFO STREAM did not answer a map"),
        (ResponseError("WRONGTYPE x"), 0, "cannot be read: WRONGTYPE x"),
    ],
)
def test_figures_redis_did_not_write_as_counts_are_refused_with_a_reason(
    info: object, due: object, why: str
) -> None:
    assert _figures(info, due) == why


async def test_a_running_sampler_measures_the_drain_and_paces_a_refusal(
    settings: Settings,
) -> None:
    # One shard: the backlog limit is a shard's, so 20 tasks fill it wherever they land.
    fast = {
        "backlog_limit": 20, "drain_sample_interval": 0.05, "retry_after_jitter": 0.0, "shards": 1,
    }  # fmt: skip
    app = Spillway(settings.model_copy(update=fast))

    @app.task
    async def job(item: Item) -> int:
        return item.n

    try:
        await app.connect()
        app.broker.drain.start()
        await app.enqueue_many([("job", {"n": i}) for i in range(20)])
        pacer = app.broker.accepts.pacer
        deadline = time.monotonic() + 10
        while pacer.rate("default") is None:  # two samples
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert pacer.rate("default") == 0
        # Nothing drains: above the slow-down threshold, and a refusal waits the upper bound.
        assert pacer.slow == {"default": 60}
        with pytest.raises(BacklogFull) as full:
            await app.enqueue("job", {"n": 20})
        assert full.value.retry_after == 60

        await drain(app)
        while pacer.slow or not pacer.rate("default"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await app.close()
