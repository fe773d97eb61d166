"""The Spillway application the HTTP accept benchmark serves (settings from SPILLWAY_*)."""

from __future__ import annotations

import os
from asyncio import Future, get_running_loop

from pydantic import BaseModel

from spillway import Spillway
from spillway.broker import AcceptReply, AcceptRequest, Broker

if os.environ.get("BENCH_STUB_WRITE"):
    # The benchmark's analysis target only: every accept answers "ok" at once and writes
    # nothing, so the figures show what the rest of the accept path costs. (`Broker.accept`
    # awaits `accept_soon`, which the API's direct routes call themselves.)
    def _accept_without_writing(self: Broker, request: AcceptRequest) -> Future[AcceptReply]:
        done: Future[AcceptReply] = get_running_loop().create_future()
        done.set_result(AcceptReply("ok", request.task_id))
        return done

    Broker.accept_soon = _accept_without_writing  # type: ignore[method-assign]


class ResizeRequest(BaseModel):
    url: str
    width: int
    height: int


app = Spillway()


@app.task
async def resize(payload: ResizeRequest) -> dict[str, int]:
    return {"pixels": payload.width * payload.height}
