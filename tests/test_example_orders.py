"""The orders example end to end: a real PostgreSQL the test starts itself (never a mock,
never SQLite), the Spillway API and a worker as processes, and the synchronous design."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from examples.orders import db
from examples.orders.pg import ThrowawayPostgres, find_postgres, postgres_url
from examples.orders.stack import Stack
from spillway import Settings, Spillway

pytestmark = pytest.mark.subprocess

ORDERS = 200


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A migrated PostgreSQL: a throw-away server, or SPILLWAY_EXAMPLE_PG_URL's."""
    with postgres_url() as url:
        asyncio.run(db.migrate(url))
        yield url


async def _orders(url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch("SELECT request_id, customer_id, sku, quantity FROM orders")
    finally:
        await conn.close()


def test_postgres_binaries_are_installed() -> None:
    # `make test` installs them (`make postgresql`): a missing install fails here, never skips.
    assert (find_postgres() / "postgres").is_file()


def test_a_throwaway_server_is_stopped_by_pid_and_leaves_no_directory() -> None:
    server = ThrowawayPostgres().start()
    data = server.dir
    assert data.is_dir()
    pid = server.pid
    server.stop()
    assert not data.exists()
    assert not Path(f"/proc/{pid}").exists()


def test_migrations_apply_once(pg_url: str) -> None:
    assert asyncio.run(db.migrate(pg_url)) == []


async def test_every_accepted_order_is_written_exactly_once(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    before = {r["request_id"] for r in await _orders(pg_url)}
    with Stack(pg_url, redis_url, tmp_path, db_concurrency=4) as stack:
        api = stack.spillway_api()
        stack.worker(concurrency=20)
        async with httpx.AsyncClient(base_url=api, timeout=10) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/process", json={"customer_id": 1 + i, "sku": 1 + i, "quantity": 1}
                    )
                    for i in range(ORDERS)
                )
            )
            assert {a.status_code for a in answers} == {202}
            accepted = {a.json()["task_id"] for a in answers}
            async with Spillway(Settings(redis_url=redis_url, prefix=stack.prefix)) as spillway:
                for task_id in accepted:
                    record = await spillway.wait(task_id, 20)
                    assert record.status == "succeeded", record.error
    rows = [r for r in await _orders(pg_url) if r["request_id"] not in before]
    assert sorted(r["request_id"] for r in rows) == sorted(accepted)  # each once, none lost


async def test_a_redelivered_order_writes_its_row_once(pg_url: str) -> None:
    pool = await db.open_pool(pg_url, size=2, name="test")
    try:
        order = db.Order(customer_id=7, sku=9, quantity=3)
        before = await pool.fetchval("SELECT stock FROM products WHERE sku = 9")
        first = await db.place_order(pool, "redelivered-task", order)
        again = await db.place_order(pool, "redelivered-task", order)
        stock = await pool.fetchval("SELECT stock FROM products WHERE sku = 9")
    finally:
        await pool.close()
    assert first.created
    assert not again.created
    assert stock == before - 3  # the stock is taken once too
    rows = [r for r in await _orders(pg_url) if r["request_id"] == "redelivered-task"]
    assert len(rows) == 1


def test_the_synchronous_design_places_orders_inline(pg_url: str, tmp_path: Path) -> None:
    with Stack(pg_url, "redis://unused", tmp_path) as stack:
        url = stack.sync_api()
        with httpx.Client(base_url=url, timeout=10) as client:
            answers = [
                client.post("/process", json={"customer_id": 3, "sku": 5000 + i, "quantity": 2})
                for i in range(5)
            ]
            refused = client.post("/process", json={"customer_id": 3, "sku": 0, "quantity": 2})
    assert [a.status_code for a in answers] == [200] * 5
    assert all(a.json()["new"] and a.json()["order_id"] for a in answers)
    assert refused.status_code == 422
