"""The Lua scripts: loaded again when Redis has forgotten them."""

from __future__ import annotations

import redis.asyncio as aioredis
from tests.engine import drain

from spillway import Spillway


async def test_scripts_are_reloaded_after_redis_forgets_them(
    app: Spillway, redis: aioredis.Redis
) -> None:
    @app.task
    async def echo(payload: dict[str, str]) -> dict[str, str]:
        return payload

    first = await app.enqueue("echo", {"text": "before"})
    await redis.script_flush()
    # Non-ASCII text crosses the hand-packed wire format intact.
    second = await app.enqueue("echo", {"text": "après ✓ 🌊"})
    await redis.script_flush()
    await drain(app)
    assert await app.result(first, timeout=1) == {"text": "before"}
    assert await app.result(second, timeout=1) == {"text": "après ✓ 🌊"}
