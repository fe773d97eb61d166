"""The Spillway application the HTTP accept benchmark serves (settings from SPILLWAY_*)."""

from __future__ import annotations

from pydantic import BaseModel

from spillway import Spillway


class ResizeRequest(BaseModel):
    url: str
    width: int
    height: int


app = Spillway()


@app.task
async def resize(payload: ResizeRequest) -> dict[str, int]:
    return {"pixels": payload.width * payload.height}
