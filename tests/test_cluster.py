"""Spillway on a Redis Cluster: shards spread over primaries, replication, primary failover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from redis.crc import key_slot
from tests.procs import output, spawn_worker, stop

from spillway import BrokerUnavailable, Settings, Spillway, TaskStatus
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


@pytest.fixture
def failover_cluster() -> Iterator[EmbeddedCluster]:
    """A cluster of its own: this test kills one of its primaries."""
    with EmbeddedCluster(primaries=3, replicas=1) as cluster:
        yield cluster


@pytest.mark.slow
async def test_killing_a_primary_mid_run_loses_no_replicated_task(
    failover_cluster: EmbeddedCluster, key_prefix: str, worker_env: dict[str, str]
) -> None:
    from tests.apps import core

    settings = cluster_settings(failover_cluster, key_prefix, wait_replicas=1, wait_timeout=0.3)
    app = Spillway(settings)
    app.tasks.update(core.app.tasks)
    ids = []
    for _ in range(3):
        ids += [r.task_id for r in await app.enqueue_many([("count", {"seconds": 0.01})] * 400)]
    assert all(ids)
    env = dict(worker_env)
    for name, value in settings.model_dump().items():
        env[f"SPILLWAY_{name.upper()}"] = str(value)
    worker = spawn_worker(env, "--concurrency", "20")
    try:
        # Let it get going, then kill the primary that serves shard 0.
        deadline = time.monotonic() + 30
        while (await app.stats()).counts.get("count", {}).get("succeeded", 0) < 200:
            assert time.monotonic() < deadline, output(worker)
            await asyncio.sleep(0.05)
        victim_port = owner(failover_cluster, next(iter(app.broker.streams(["default"]))))
        victim = next(n for n in failover_cluster.nodes if n.port == victim_port)
        victim.kill()
        await asyncio.to_thread(failover_cluster.wait_healthy)

        async def settled() -> bool:
            try:
                records = [await app.broker.get(i) for i in ids if i]
            except BrokerUnavailable:  # this client, too, meets the dead node until it learns
                return False
            return all(r is not None and r["status"] == "succeeded" for r in records)

        deadline = time.monotonic() + 60
        while not await settled():
            assert time.monotonic() < deadline, output(worker)[-3000:]
            await asyncio.sleep(0.2)
    finally:
        stop(worker)
    # Lost: accepted (and replicated before the 202) but gone or unfinished. None may be.
    for task_id in ids:
        assert task_id is not None
        assert (await app.get(task_id)).status is TaskStatus.SUCCEEDED
    # Duplicates are bounded by what was in flight at the kill (20 per worker) plus outcomes
    # the dead primary acknowledged but had not yet replicated.
    runs_key = f"{key_prefix}:test:runs"
    client = app.broker.client
    executions = {k: int(v) for k, v in (await client.hgetall(runs_key)).items()}
    assert set(executions) == set(ids)
    extra = sum(n - 1 for n in executions.values())
    assert extra <= 20 + 100, f"{extra} duplicate executions"
    await app.close()
