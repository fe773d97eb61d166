"""The Spillway application the HTTP accept benchmark serves (settings from SPILLWAY_*)."""

from __future__ import annotations

import os

from pydantic import BaseModel

from spillway import Spillway
from spillway.broker import AcceptReply, AcceptRequest, Broker

if os.environ.get("BENCH_STUB_WRITE"):
    # The benchmark's analysis target only: every accept answers "ok" at once and writes
    # nothing, so the figures show what the rest of the accept path costs.
    async def _accept_without_writing(self: Broker, request: AcceptRequest) -> AcceptReply:
        return AcceptReply("ok", request.task_id)

    Broker.accept = _accept_without_writing  # type: ignore[method-assign]


class ResizeRequest(BaseModel):
    url: str
    width: int
    height: int


app = Spillway()


@app.task
async def resize(payload: ResizeRequest) -> dict[str, int]:
    return {"pixels": payload.width * payload.height}
