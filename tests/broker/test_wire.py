"""Script batches: the fast senders (`Pipes`, connections redis-py opens and hands over), the
probe that decides whether they may run, and the stock senders on redis-py's pipelines."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.exceptions import ConnectionError, NoScriptError, TimeoutError

from spillway import Settings, Spillway, TaskStatus, Worker
from spillway.broker import redispy_wire
from spillway.broker.batch import Batch
from spillway.broker.connection import make_client
from spillway.broker.keys import Keys
from spillway.broker.redispy_wire import Need, Pipes, PipeSender, probe
from spillway.broker.senders import StockClusterSender, StockSender, make_sender
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
        raw = await app.broker.admin.get(task_id)
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
    sender = app.broker.core._sender
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


# --- the probe and the stock senders ---------------------------------------------------------


@pytest.fixture
async def single(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    """A client of the session's single server, as the broker makes them."""
    client = make_client(redis_server.url, socket_timeout=5, connect_timeout=5, max_connections=4)
    assert isinstance(client, aioredis.Redis)
    yield client
    await client.aclose(close_connection_pool=True)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_the_probe_passes_on_the_installed_redis_py(single: aioredis.Redis) -> None:
    assert probe() is None
    sender = make_sender(single, 1.0, fast=True)
    try:
        assert isinstance(sender, PipeSender)
    finally:
        await sender.close()


@pytest.mark.parametrize(
    ("need", "reason"),
    [
        (Need("redis.asyncio.connection", "AbstractConnection.gone"), "is missing"),
        (Need("redis._parsers.gone", "BaseParser"), "is missing"),
        (Need("redis.asyncio.connection", "AbstractConnection.disconnect", ("gone",)), "takes no"),
    ],
)
async def test_a_redis_py_without_what_the_fast_path_uses_gets_its_pipelines_and_one_warning(
    single: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    need: Need,
    reason: str,
) -> None:
    monkeypatch.setattr(redispy_wire, "NEEDS", (*redispy_wire.NEEDS, need))
    with caplog.at_level(logging.WARNING, logger="spillway.broker"):
        sender = make_sender(single, 1.0, fast=True)
    assert isinstance(sender, StockSender)
    [warning] = warnings_of(caplog)
    assert redis.__version__ in warning
    assert need.attr in warning
    assert reason in warning
    batch = Batch()
    batch.commands.append(["ECHO", "through the pipeline"])
    assert await sender.send(batch) == ["through the pipeline"]


async def test_a_take_over_that_finds_no_stream_sends_through_the_pipeline_from_then_on(
    single: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    key_prefix: str,
) -> None:
    take_over = redispy_wire._take_over

    def on_a_redis_py_without_writer(conn: Any) -> Any:
        # As a redis-py whose connections keep their stream elsewhere; given back after, so
        # redis-py closes it when the failed take-over drops the connection.
        writer, conn._writer = conn._writer, None
        try:
            return take_over(conn)
        finally:
            conn._writer = writer

    monkeypatch.setattr(redispy_wire, "_take_over", on_a_redis_py_without_writer)
    sender = make_sender(single, 1.0, fast=True)
    try:
        with caplog.at_level(logging.WARNING, logger="spillway.broker"):
            for n in range(3):
                batch = Batch()
                batch.commands += [["INCR", f"{key_prefix}:n"], ["ECHO", n]]
                assert await sender.send(batch) == [n + 1, str(n)]  # no request fails for it
        [warning] = warnings_of(caplog)
        assert "taking over a connection failed" in warning
        assert redis.__version__ in warning
    finally:
        await sender.close()


async def test_stock_batches_keep_the_contract(
    single: aioredis.Redis, caplog: pytest.LogCaptureFixture, key_prefix: str
) -> None:
    sender = StockSender(single, timeout=5)
    batch = Batch(wait_replicas=1, wait_ms=10)
    # Commands redis-py has no reply callback for, like EVALSHA: their replies as they come.
    batch.commands += [["APPEND", key_prefix, "v"], ["INCR", key_prefix], ["EVALSHA", "0" * 40, 0]]
    batch.commands.append(["ECHO", "e"])
    with caplog.at_level(logging.WARNING, logger="spillway.broker"):
        replies = await sender.send(batch)
    assert batch.sent
    assert len(replies) == 4  # the WAIT's reply is checked and stripped
    assert replies[0] == 1
    assert "not an integer" in str(replies[1])
    assert isinstance(replies[2], NoScriptError)
    assert replies[3] == "e"
    assert any("0 of 1 replicas" in w for w in warnings_of(caplog))  # the server has none
    assert await sender.send(batch, [3]) == ["e"]


async def test_a_refused_connection_sends_nothing_in_stock_mode() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(
        f"redis://127.0.0.1:{port}/0", socket_timeout=1, connect_timeout=1, max_connections=2
    )
    assert isinstance(client, aioredis.Redis)
    try:
        batch = Batch()
        batch.commands.append(["PING"])
        with pytest.raises(ConnectionError):
            await StockSender(client, timeout=1).send(batch)
        assert not batch.sent
    finally:
        await client.aclose(close_connection_pool=True)


async def test_a_broker_in_stock_mode_writes_and_reads_tasks_end_to_end(
    settings: Settings, redis: aioredis.Redis
) -> None:
    app = Spillway(settings.model_copy(update={"fast_path": False}))

    @app.task
    async def double(item: Item) -> int:
        return item.n * 2

    try:
        assert isinstance(app.broker.core._sender, StockSender | StockClusterSender)
        ids = [await app.enqueue("double", {"n": n}) for n in range(5)]
        results = await app.enqueue_many([("double", {"n": n}) for n in range(5, 50)])
        ids += [r.task_id for r in results if r.task_id]
        assert len(ids) == 50
        await redis.script_flush()  # NOSCRIPT replies come back in place: reloaded, resent
        await asyncio.wait_for(Worker(app, burst=True).run(), 30)
        assert [await app.result(i, timeout=1) for i in ids] == [n * 2 for n in range(50)]
    finally:
        await app.close()


def test_connections_are_taken_over_on_uvloop_as_the_api_and_workers_run(
    redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """uvloop's transports are not `asyncio.Transport` subclasses: the take-over must still
    hold there, or every batch of the API and the workers silently leaves the fast path."""
    uvloop = pytest.importorskip("uvloop")  # installed wherever Spillway runs its fast path

    async def batches() -> tuple[list[Any], bool]:
        client = make_client(
            redis_server.url, socket_timeout=5, connect_timeout=5, max_connections=4
        )
        sender = make_sender(client, 5.0, fast=True)
        try:
            batch = Batch()
            batch.commands.append(["ECHO", "over a taken-over connection"])
            replies = await sender.send(batch)
            assert isinstance(sender, PipeSender)
            return replies, sender._fast
        finally:
            await sender.close()
            assert isinstance(client, aioredis.Redis)
            await client.aclose(close_connection_pool=True)

    with caplog.at_level(logging.WARNING, logger="spillway.broker"):
        replies, still_fast = uvloop.run(batches())

    assert replies == ["over a taken-over connection"]
    assert still_fast, warnings_of(caplog)
    assert not warnings_of(caplog)
