"""`LimitOps`: the concurrency slots and start tokens of limited task types (``lease.lua``).

A worker takes slots and tokens before it reads a limited type's lanes, gives back what the
read did not use, keeps its slots alive while their tasks run (a slot is a lease that expires
after the visibility timeout unless renewed, so a dead worker's slots come free) and frees
each slot once its task's outcome is stored.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from spillway.broker.core import RedisCore
from spillway.limits import TypeLimits

__all__ = ["Grant", "LimitOps"]


@dataclass(frozen=True, slots=True)
class Grant:
    """What `LimitOps.take` got: how many starts, the slot tokens (one per start when the type
    has a concurrency limit, else none), and, when fewer than wanted, how long until another
    start may be granted (0: when a slot frees, which nobody can tell in advance)."""

    count: int
    tokens: list[str]
    retry_after: float


class LimitOps:
    """The limit side of the broker, over a shared `RedisCore`."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core
        # Tokens must be unique across processes and calls: a random stem, then a counter.
        self._stem = secrets.token_hex(6)
        self._calls = itertools.count()

    def _ttl_ms(self) -> int:
        return int(self.core.settings.visibility_timeout * 1000)

    async def take(self, task_type: str, limits: TypeLimits, want: int) -> Grant:
        """Up to `want` starts of `task_type` within its limits."""
        prefix = f"{self._stem}.{next(self._calls)}."
        interval = limits.rate.interval_ms if limits.rate else 0
        reply = await self.core.script(
            "lease",
            list(self.core.keys.limit(task_type)),
            ["take", want, limits.concurrency or 0, self._ttl_ms(), prefix, f"{interval:.3f}"],
        )
        granted, wait_ms = int(reply[0]), int(reply[1])
        tokens = [f"{prefix}{i}" for i in range(1, granted + 1)] if limits.concurrency else []
        return Grant(granted, tokens, wait_ms / 1000)

    async def give(
        self, task_type: str, limits: TypeLimits, tokens: Sequence[str], unused_starts: int = 0
    ) -> None:
        """Free these slots, and refund starts that were granted but not used."""
        if not tokens and not (unused_starts and limits.rate):
            return
        interval = limits.rate.interval_ms if limits.rate else 0
        await self.core.script(
            "lease",
            list(self.core.keys.limit(task_type)),
            ["give", unused_starts, f"{interval:.3f}", *tokens],
        )

    async def keep(self, task_type: str, tokens: Sequence[str]) -> None:
        """Renew these slots for another visibility timeout."""
        if tokens:
            await self.core.script(
                "lease", list(self.core.keys.limit(task_type)), ["keep", self._ttl_ms(), *tokens]
            )

    async def held(self, task_type: str) -> int:
        """Slots of `task_type` held now, by every worker (expired leases left out)."""
        leases, _ = self.core.keys.limit(task_type)
        count: int = await self.core.run(
            lambda: self.core.client.zcount(leases, f"({int(time.time() * 1000)}", "+inf")
        )
        return count
