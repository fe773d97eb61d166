"""The synchronous design: ``POST /process`` places the order inline and answers when it is
written, through one pool per server process with the usual defaults.

    ORDERS_DATABASE_URL=postgresql://... uvicorn examples.orders.sync_api:app --workers 2

The pool holds ``ORDERS_POOL_SIZE`` (20) connections and a request waits at most
``ORDERS_POOL_TIMEOUT`` (30 s, the default of SQLAlchemy's and psycopg's pools) for one; one that
waited longer is answered ``503`` with ``{"error": "pool-timeout"}``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from examples.orders import db

__all__ = ["POOL_SIZE", "POOL_TIMEOUT", "app"]

POOL_SIZE = int(os.environ.get("ORDERS_POOL_SIZE", "20"))
POOL_TIMEOUT = float(os.environ.get("ORDERS_POOL_TIMEOUT", "30"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = os.environ["ORDERS_DATABASE_URL"]
    app.state.pool = await db.open_pool(url, size=POOL_SIZE, name="orders-sync")
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


@app.post("/process", response_model=None)
async def process(order: db.Order, request: Request) -> dict[str, int | bool | None] | JSONResponse:
    """Place the order now; answer once it is committed."""
    pool: asyncpg.Pool = request.app.state.pool
    try:
        placed = await db.place_order(pool, uuid.uuid4().hex, order, wait=POOL_TIMEOUT)
    except TimeoutError:
        return JSONResponse({"error": "pool-timeout"}, status_code=503)
    return {"order_id": placed.order_id, "total_cents": placed.total_cents, "new": placed.created}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
