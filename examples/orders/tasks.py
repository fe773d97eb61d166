"""The Spillway front door: ``POST /process`` accepts an order, a worker places it.

    SPILLWAY_DEFAULT_TASK_TYPE=place_order spillway api examples.orders.tasks:app
    spillway worker examples.orders.tasks:app

The database is bounded twice: ``concurrency=`` holds at most ``ORDERS_DB_CONCURRENCY`` (20)
orders in flight across every worker process and machine (docs/limits.md), and each worker
process's pool holds at most that many connections.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg

from examples.orders import db
from spillway import Spillway, TaskContext

__all__ = ["DB_CONCURRENCY", "app"]

DB_CONCURRENCY = int(os.environ.get("ORDERS_DB_CONCURRENCY", "20"))

app = Spillway()  # settings from SPILLWAY_* environment variables


class _Pool:
    """This worker process's pool, opened by its first task (Spillway has no start-up hook)."""

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def get(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:  # the first tasks arrive together: open one pool
                if self._pool is None:
                    url = os.environ["ORDERS_DATABASE_URL"]
                    self._pool = await db.open_pool(
                        url, size=DB_CONCURRENCY, name="orders-spillway"
                    )
        return self._pool


_pool = _Pool()


# A missing product stays missing however often it is retried; a lost connection does not.
@app.task(concurrency=DB_CONCURRENCY, no_retry_for=(LookupError,))
async def place_order(payload: db.Order, ctx: TaskContext) -> dict[str, int | bool | None]:
    """Place the order; keyed by the task id, so a redelivered task writes its row once."""
    placed = await db.place_order(await _pool.get(), ctx.task_id, payload)
    return {"order_id": placed.order_id, "total_cents": placed.total_cents, "new": placed.created}
