"""Script batches: the fast senders (`Pipes`, connections redis-py opens and hands over), the
probe that decides whether they may run, and the stock senders on redis-py's pipelines."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.exceptions import ConnectionError, TimeoutError

from spillway import Settings, Spillway, TaskStatus
from spillway.broker.connection import make_client
from spillway.broker.keys import Keys
from spillway.broker.redispy_wire import PipeSender, Pipes
from spillway.embedded import EmbeddedRedis


class Item(BaseModel):
    n: int


async def _round_trip(url: str) -> dict[str, str]:
    """Enqueue one task through a fresh app on `url`; its raw record, read back the same way."""
    app = Spillway(Settings(redis_url=url, prefix="wire"))

    @app.task
    async def job(item: Item) -> None:
        return None

    try:
        task_id = await app.enqueue("job", {"n": 1})
        assert (await app.get(task_id)).status is TaskStatus.QUEUED
        raw = await app.broker.get(task_id)
        assert raw is not None
        return raw
    finally:
        await app.close()


async def test_batches_authenticate_and_select_the_database_of_the_url() -> None:
    with EmbeddedRedis() as server:
        admin = aioredis.Redis.from_url(server.url)
        try:
            await admin.config_set("requirepass", "s3cret")
        finally:
            await admin.aclose()
        url = server.url.replace("redis://", "redis://:s3cret@").rsplit("/", 1)[0] + "/3"
        record = await _round_trip(url)
        plain = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            assert await plain.dbsize() > 0  # written to database 3, as the URL says
            key = Keys("wire").for_task(record["id"]).task(record["id"])
            assert await plain.hget(key, "status") == "queued"
        finally:
            await plain.aclose()


async def test_batches_reach_a_server_on_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    with EmbeddedRedis(extra_args=["--unixsocket", str(path), "--unixsocketperm", "700"]):
        record = await _round_trip(f"unix://{path}?db=0")
        assert record["status"] == "queued"


async def test_a_connection_redis_closed_while_idle_is_replaced(
    app: Spillway, redis: aioredis.Redis
) -> None:
    sender = app.broker._sender
    if not isinstance(sender, PipeSender):
        pytest.skip("only the fast single-server sender keeps connections of its own")

    @app.task
    async def job(item: Item) -> None:
        return None

    first = await app.enqueue("job", {"n": 1})
    idle = list(sender.pipes._idle)
    assert idle
    for pipe in idle:  # Redis closes them (a restart or its idle timeout would, too)
        host, port = pipe.transport.get_extra_info("sockname")[:2]
        assert await redis.client_kill_filter(addr=f"{host}:{port}") == 1
    deadline = time.monotonic() + 5
    while not all(p.closed for p in idle):  # the loop learns of the close from the socket
        assert time.monotonic() < deadline, "the killed connections never closed"
        await asyncio.sleep(0.01)
    second = await app.enqueue("job", {"n": 2})  # a new connection, not a 503
    assert {(await app.get(t)).status for t in (first, second)} == {TaskStatus.QUEUED}


async def test_a_frozen_redis_times_out_each_batch_and_opens_no_more_than_the_limit() -> None:
    with EmbeddedRedis() as server:
        client = make_client(server.url, socket_timeout=5, connect_timeout=5, max_connections=4)
        assert isinstance(client, aioredis.Redis)
        pipes = Pipes(client, timeout=0.3, limit=2)
        try:
            # Two batches at once open two connections, both idle afterwards.
            pongs = await asyncio.gather(
                pipes.exchange([["PING"]], None), pipes.exchange([["PING"]], None)
            )
            assert list(pongs) == [["PONG"], ["PONG"]]
            server.pause()
            try:
                stuck = [asyncio.ensure_future(pipes.exchange([["PING"]], None)) for _ in "ab"]
                await asyncio.sleep(0)  # both take their connection and write
                started = time.monotonic()
                with pytest.raises(ConnectionError, match="2 batches are waiting"):
                    await pipes.exchange([["PING"]], None)  # at the limit: refused at once
                assert time.monotonic() - started < 0.1
                for outcome in await asyncio.gather(*stuck, return_exceptions=True):
                    assert isinstance(outcome, TimeoutError)  # each after its 0.3 s
                assert time.monotonic() - started < 2
            finally:
                server.resume()
            # The timed-out connections were dropped: a new one answers.
            assert await pipes.exchange([["PING"]], None) == ["PONG"]
        finally:
            await pipes.close()
            await client.aclose(close_connection_pool=True)


async def test_error_replies_come_back_in_place_and_the_connection_stays_in_step() -> None:
    with EmbeddedRedis() as server:
        client = make_client(server.url, socket_timeout=5, connect_timeout=5, max_connections=4)
        assert isinstance(client, aioredis.Redis)
        pipes = Pipes(client, timeout=5)
        try:
            replies = await pipes.exchange(
                [["SET", "k", "v"], ["INCR", "k"], ["EVALSHA", "0" * 40, 0], ["GET", "k"]], None
            )
            assert replies[0] == "OK"
            assert "not an integer" in str(replies[1])
            assert type(replies[2]).__name__ == "NoScriptError"
            assert replies[3] == "v"
            assert await pipes.exchange([["GET", "k"]], None) == ["v"]
        finally:
            await pipes.close()
            await client.aclose(close_connection_pool=True)
