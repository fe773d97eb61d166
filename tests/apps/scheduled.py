"""An application with a schedule of one tick a second, for the worker-process tests."""

from __future__ import annotations

from pydantic import BaseModel
from tests.apps.core import record_run

from spillway import Spillway, TaskContext

app = Spillway()


class Beat(BaseModel):
    source: str


@app.cron(every=1, payload={"source": "cron"}, name="each-second")
async def beat(payload: Beat, ctx: TaskContext) -> str:
    """Counts its executions per task id (tests.apps.core.record_run)."""
    await record_run(ctx)
    return payload.source
