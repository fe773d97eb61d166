"""Tasks for the CLI and supervisor tests.

Worker subprocesses import ``tests.apps.basic:app`` (settings from ``SPILLWAY_*``); the tests
themselves call :func:`build` with their own settings.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from spillway import Settings, Spillway


class Numbers(BaseModel):
    a: int
    b: int


class Nap(BaseModel):
    seconds: float = 0.0


def build(settings: Settings | None = None) -> Spillway:
    """The application, with settings from the environment unless given."""
    app = Spillway(settings)

    @app.task
    def add(payload: Numbers) -> int:
        return payload.a + payload.b

    @app.task
    async def nap(payload: Nap) -> float:
        await asyncio.sleep(payload.seconds)
        return payload.seconds

    @app.task(max_retries=0)
    def boom(payload: Nap) -> None:
        raise RuntimeError("boom [on purpose]")

    return app


app = build()
