"""Spillway on a Redis Cluster: shards spread over primaries, replication before the 202.

A primary failover under load is chaos scenario 14 (tests/chaos/test_cluster_faults.py).
"""

from __future__ import annotations

import asyncio

from redis.crc import key_slot

from spillway import Settings, Spillway
from spillway.embedded_cluster import EmbeddedCluster


def owner(cluster: EmbeddedCluster, key: str) -> int:
    """Port of the primary that serves `key`'s slot."""
    with cluster.client(cluster.nodes[0]) as c:
        for first, last, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
            if first <= key_slot(key.encode()) <= last:
                return int(primary[1])
    raise AssertionError(f"no node serves {key}")


def cluster_settings(cluster: EmbeddedCluster, key_prefix: str, **extra: object) -> Settings:
    return Settings(
        redis_url=cluster.url, prefix=key_prefix, shards=3, visibility_timeout=1.0,
        retry_base=0.05, heartbeat_interval=0.5, block_ms=100, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_three_shards_land_on_three_different_primaries(
    redis_cluster: EmbeddedCluster, key_prefix: str
) -> None:
    app = Spillway(cluster_settings(redis_cluster, key_prefix))
    streams = list(app.broker.streams(["default"]))
    assert len({owner(redis_cluster, s) for s in streams}) == 3
    await app.close()


async def test_tasks_spread_over_shards_and_all_complete(
    redis_cluster: EmbeddedCluster, key_prefix: str
) -> None:
    from spillway import Worker

    app = Spillway(cluster_settings(redis_cluster, key_prefix))

    @app.task
    async def echo(payload: int) -> int:
        return payload

    ids = [r.task_id for r in await app.enqueue_many([("echo", i) for i in range(300)])]
    per_stream = {}
    client = app.broker.client
    for stream in app.broker.streams(["default"]):
        per_stream[stream] = await client.xlen(stream)
    assert sum(per_stream.values()) == 300
    assert min(per_stream.values()) > 50  # crc32 spreads ids evenly enough
    await asyncio.wait_for(Worker(app, burst=True).run(), 30)
    assert [await app.result(i, timeout=1) for i in ids if i] == list(range(300))
    await app.close()


async def test_accept_can_wait_for_a_replica_to_have_the_task(
    redis_cluster: EmbeddedCluster, key_prefix: str
) -> None:
    app = Spillway(cluster_settings(redis_cluster, key_prefix, wait_replicas=1, wait_timeout=0.3))

    @app.task
    async def job(payload: int) -> None:
        return None

    task_id = await app.enqueue("job", 1)
    record = app.broker.keys.for_task(task_id).task(task_id)
    primary = owner(redis_cluster, record)
    replicas = []
    for node in redis_cluster.nodes:
        with redis_cluster.client(node) as c:
            info = c.info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == primary:
                replicas.append(node)
    assert replicas
    with redis_cluster.client(replicas[0]) as c:
        c.execute_command("READONLY")
        # Already there when the enqueue returned: the WAIT came before the answer.
        assert c.hget(record, "status") == "queued"
    await app.close()
