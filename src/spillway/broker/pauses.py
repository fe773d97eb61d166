"""`PauseOps`: which queues an operator paused, kept in one Redis set.

A paused queue still accepts tasks; workers start none of them until it is resumed (see
`spillway.worker`: they read the set with their due-task check, `WorkerOps.promote_due`). The
set is written by the API or the CLI and read back as untrusted input: a member that is not a
queue name is left out, never an error.
"""

from __future__ import annotations

import logging

from spillway.broker.core import RedisCore
from spillway.lanes import valid_queue

__all__ = ["PauseOps", "parse_paused"]

log = logging.getLogger("spillway.broker")


def parse_paused(members: object) -> tuple[frozenset[str], int]:
    """The queue names of the paused set as Redis returned it (a set or a list; anything else,
    such as the error of a key of another type, is read as empty), and how many members were
    left out because they are not queue names."""
    if not isinstance(members, set | list | tuple):
        return frozenset(), 0
    good = frozenset(m for m in members if valid_queue(m))
    return good, len(members) - len(good)


class PauseOps:
    """Pause, resume and list paused queues, over a shared `RedisCore`."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def pause(self, queue: str) -> bool:
        """Pause `queue`; False if it was paused already."""
        added: int = await self.core.run(
            lambda: self.core.client.sadd(self.core.keys.paused, queue)
        )
        return bool(added)

    async def resume(self, queue: str) -> bool:
        """Resume `queue`; False if it was not paused."""
        removed: int = await self.core.run(
            lambda: self.core.client.srem(self.core.keys.paused, queue)
        )
        return bool(removed)

    async def paused(self) -> frozenset[str]:
        """The paused queues (a malformed member is logged and left out)."""

        async def read() -> object:
            async with self.core.client.pipeline(transaction=False) as pipe:
                pipe.smembers(self.core.keys.paused)
                replies: list[object] = await pipe.execute(raise_on_error=False)
            return replies[0]

        names, bad = parse_paused(await self.core.run(read))
        if bad:
            log.warning("skipping %d member(s) of %s: not queue names", bad, self.core.keys.paused)
        return names
