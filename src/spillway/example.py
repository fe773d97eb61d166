"""The example application `spillway dev` runs when given no APP, and the README shows.

Try it::

    spillway dev
    curl -s localhost:8000/tasks -H 'content-type: application/json' \\
        -d '{"type": "word_count", "payload": {"text": "to be or not to be"}}'
"""

from __future__ import annotations

import asyncio
import random

from pydantic import BaseModel, Field

from spillway import Spillway, TaskContext

__all__ = ["FlakyRequest", "ResizeRequest", "TextRequest", "app"]

app = Spillway()


class ResizeRequest(BaseModel):
    """Which image to resize, and to what size."""

    url: str
    width: int = Field(gt=0, le=10_000)
    height: int = Field(gt=0, le=10_000)


class TextRequest(BaseModel):
    text: str = Field(max_length=100_000)


class FlakyRequest(BaseModel):
    """`failure_rate` is the chance that one attempt fails."""

    failure_rate: float = Field(default=0.5, ge=0, le=1)


@app.task(timeout=10)
async def resize_image(payload: ResizeRequest) -> dict[str, object]:
    """Stands in for slow I/O-bound work: half a second, like the seed's workload."""
    await asyncio.sleep(0.5)
    name = payload.url.rsplit("/", 1)[-1] or "image"
    return {"thumbnail": f"{name}@{payload.width}x{payload.height}", "bytes": 1234}


@app.task
def word_count(payload: TextRequest) -> dict[str, int]:
    """A sync handler: Spillway runs it in a thread pool."""
    words = payload.text.split()
    return {"words": len(words), "distinct": len({w.lower() for w in words})}


@app.task(max_retries=5, retry_base=0.5, retry_cap=5)
def flaky(payload: FlakyRequest, ctx: TaskContext) -> dict[str, int]:
    """Fails at random, to show retries with backoff and, after six failures, the dead letters."""
    if random.random() < payload.failure_rate:  # noqa: S311 - a demo, not cryptography
        raise RuntimeError(f"attempt {ctx.attempt} failed (on purpose)")
    return {"succeeded_on_attempt": ctx.attempt}
