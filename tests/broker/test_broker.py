"""Deliveries at the broker: one outcome per delivery, entries it did not write dead-lettered."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis
from tests.engine import Item, drain, pending, read_everything, stream_key, stream_lengths

from spillway import Settings, Spillway
from spillway.broker import Outcome


async def test_finish_writes_one_outcome_for_a_duplicate_delivery(app: Spillway) -> None:
    @app.task
    async def once(item: Item) -> int:
        return item.n

    task_id = await app.enqueue("once", {"n": 1})
    broker = app.broker
    deliveries = await read_everything(app, "a")
    started = await broker.work.begin(deliveries)
    assert started[0] is not None
    from spillway.broker import Outcome

    first = Outcome(deliveries[0], "once", "succeeded", "1", attempts=1)
    second = Outcome(deliveries[0], "once", "succeeded", "2", attempts=1)
    assert await broker.work.finish([first]) == [True]
    assert await broker.work.finish([second]) == [False]
    assert (await app.get(task_id)).result == 1
    # Only the outcome that was written is counted.
    assert (await app.stats()).counts == {"once": {"succeeded": 1}}


async def test_a_fresh_begin_counts_one_delivery_and_skips_what_ended_since_the_read(
    app: Spillway,
) -> None:
    # begin.lua trusts a fresh read (delivered once, just now) instead of asking the PEL: the
    # attempt is 1, and an entry that ended between the read and the begin (here cancelled:
    # acknowledged and its record terminal) is skipped by its record, not run.
    @app.task
    async def once(item: Item) -> int:
        return item.n

    kept, cancelled = [await app.enqueue("once", {"n": n}) for n in range(2)]
    deliveries = await read_everything(app, "a")
    assert await app.cancel(cancelled) is not None
    started = await app.broker.work.begin(deliveries, fresh=True)
    by_id = {d.task_id: s for d, s in zip(deliveries, started, strict=True)}
    first = by_id[kept]
    assert first is not None
    assert first.attempts == 1
    assert by_id[cancelled] is None
    assert (await app.get(kept)).attempts == 1
    assert (await app.get(cancelled)).status.value == "cancelled"


async def test_one_finish_batch_writes_each_outcome_of_every_stream_and_skips_the_stale(
    settings: Settings, redis: aioredis.Redis
) -> None:
    # finish.lua takes one call per stream and batch: the replies must map back to the right
    # outcomes whatever the shards, and a stale outcome in the middle writes nothing.
    app = Spillway(settings.model_copy(update={"shards": 3}))

    @app.task(max_retries=1)
    async def mixed(item: Item) -> int:
        return item.n

    ids = [await app.enqueue("mixed", {"n": n}) for n in range(12)]
    deliveries = await read_everything(app, "a")
    assert len({d.shard for d in deliveries}) > 1
    assert all(await app.broker.work.begin(deliveries))
    kinds = ["succeeded", "retry", "dead", "cancelled"]
    outcomes = [
        Outcome(d, "mixed", kinds[i % 4], "7" if i % 4 == 0 else "boom", attempts=1)
        for i, d in enumerate(deliveries)
    ]
    stale = Outcome(deliveries[0], "mixed", "succeeded", "8", attempts=1)
    batch = [*outcomes[:5], stale, *outcomes[5:]]
    assert await app.broker.work.finish(batch) == [True] * 5 + [False] + [True] * 7
    by_id = {d.task_id: kinds[i % 4] for i, d in enumerate(deliveries)}
    want = {"succeeded": "succeeded", "retry": "failed", "dead": "dead", "cancelled": "cancelled"}
    for task_id in ids:
        record = await app.get(task_id)
        assert record.status.value == want[by_id[task_id]], (task_id, record.status)
    assert (await app.get(deliveries[0].task_id)).result == 7
    # Every delivery acknowledged and deleted; one dead letter per dead outcome; counted once.
    assert await pending(app, redis) == 0
    assert len(await app.dead_letters()) == 3
    assert (await app.stats()).counts == {
        "mixed": {"succeeded": 3, "retry": 3, "dead": 3, "cancelled": 3}
    }
    await app.close()


async def test_entries_spillway_did_not_write_are_dead_lettered_unrun(
    app: Spillway, redis: aioredis.Redis, tmp_path: Path
) -> None:
    @app.task
    async def known(item: Item) -> None:
        return None

    await app.connect()
    canary = tmp_path / "pwned"
    # A pickle whose loading would create the canary file: Spillway must never unpickle it.
    blob = b"cos\nsystem\n(S'touch " + str(canary).encode() + b"'\ntR."
    stream = stream_key(app)
    await redis.xadd(stream, {"data": blob})  # no task id at all
    await redis.xadd(stream, {"id": blob})  # a "task id" that names no task
    await redis.xadd(stream, {"hello": "world"})
    await drain(app)

    assert not canary.exists()
    dead = await app.dead_letters()
    assert len(dead) == 3
    assert all(d.error.startswith("Malformed") for d in dead)
    assert await stream_lengths(app, redis) == 0
    assert await pending(app, redis) == 0
    assert await app.replay_all() == 0  # there is no task in them to run
