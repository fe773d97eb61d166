"""The task types the API tests serve, built from a settings object (see `server_app`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from spillway import Settings, Spillway


class Resize(BaseModel):
    """An image to resize."""

    url: str = Field(max_length=2000)
    width: int = Field(gt=0, le=10_000)
    height: int = Field(gt=0, le=10_000)


class Explode(BaseModel):
    """A task that always fails with this message."""

    message: str = Field(max_length=200)


def build(settings: Settings, tracer_provider: Any = None) -> Spillway:
    """An application with three task types; each fails for good on its first error."""
    app = Spillway(settings, tracer_provider=tracer_provider)

    @app.task(max_retries=0)
    async def resize(payload: Resize) -> dict[str, int]:
        return {"pixels": payload.width * payload.height}

    @app.task(max_retries=0)
    def echo(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    @app.task(max_retries=0, queue="risky")
    async def explode(payload: Explode) -> None:
        raise RuntimeError(payload.message)

    return app
