"""The Redis server the broker finds: one that may evict keys, one that is full, one that
restarted."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from tests.engine import Item, drain, own_server

from spillway import BrokerUnavailable, Settings, TaskNotFound, TaskStatus


async def test_start_is_refused_against_a_redis_that_may_evict_keys(
    settings: Settings,
) -> None:
    from spillway.errors import EvictionPolicyError

    async with own_server(settings) as (server, app):
        client = aioredis.Redis.from_url(server.url)
        await client.config_set("maxmemory-policy", "allkeys-lru")
        await client.aclose()
        with pytest.raises(EvictionPolicyError):
            await app.connect()


async def test_workers_drain_a_redis_that_is_full(settings: Settings) -> None:
    big = settings.model_copy(update={"backlog_limit": 10**6})
    async with own_server(big, maxmemory="4mb") as (_, app):

        @app.task
        async def job(payload: dict[str, str]) -> None:
            return None

        accepted, refused = 0, None
        while refused is None and accepted < 10_000:
            try:
                await app.enqueue("job", {"pad": "x" * 2000})
                accepted += 1
            except BrokerUnavailable as exc:  # a full Redis refuses new work: 503, not a loss
                refused = exc
        assert refused is not None
        assert accepted > 100
        # The worker's scripts may write over maxmemory (they free more than they keep).
        worker = await drain(app)
        assert worker.processed == accepted
        assert (await app.stats()).queues[0].backlog == 0


async def test_the_first_commands_after_a_redis_restart_succeed(settings: Settings) -> None:
    async with own_server(settings) as (server, app):

        @app.task
        async def job(item: Item) -> None:
            return None

        task_id = await app.enqueue("job", {"n": 1})
        assert (await app.get(task_id)).status is TaskStatus.QUEUED  # a pooled connection
        server.kill()  # no persistence: it comes back empty
        await asyncio.to_thread(server.restart)  # the loop runs meanwhile, as a server's would
        # Each pooled connection Redis closed is replaced when taken, not failed once first.
        with pytest.raises(TaskNotFound):
            await app.get(task_id)
        assert (await app.stats()).queues[0].backlog == 0
