"""The Spillway application the HTTP accept benchmark serves (settings from SPILLWAY_*)."""

from __future__ import annotations

import os
from asyncio import Future, get_running_loop, sleep

from pydantic import BaseModel, Field

from spillway import Spillway
from spillway.broker import AcceptRequest
from spillway.broker.accept import AcceptWriter

if os.environ.get("BENCH_STUB_WRITE"):
    # The benchmark's analysis target only: every accept answers at once and writes nothing,
    # so the figures show what the rest of the accept path costs.
    def _accept_without_writing(self: AcceptWriter, request: AcceptRequest) -> Future[str]:
        done: Future[str] = get_running_loop().create_future()
        done.set_result(request.task_id)
        return done

    AcceptWriter.accept = _accept_without_writing  # type: ignore[method-assign]


class ResizeRequest(BaseModel):
    url: str
    width: int
    height: int


app = Spillway()


@app.task
async def resize(payload: ResizeRequest) -> dict[str, int]:
    return {"pixels": payload.width * payload.height}


class PauseRequest(BaseModel):
    ms: int = Field(ge=0, le=1000)


@app.task
async def pause(payload: PauseRequest) -> None:
    """Waits `ms` (an I/O call's stand-in): bounds what a worker drains (bench.overload)."""
    await sleep(payload.ms / 1000)


class OrderLine(BaseModel):
    sku: str
    quantity: int
    price: str


class OrderRequest(BaseModel):
    customer: str
    lines: list[OrderLine]


@app.task
async def order(payload: OrderRequest) -> dict[str, int]:
    """A payload of a few hundred bytes of JSON that repeats its keys (bench.rewrite)."""
    return {"lines": len(payload.lines)}
