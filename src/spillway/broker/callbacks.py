"""`CallbackOps`: the completion webhooks due in each shard, claimed and settled.

A terminal task whose record names a ``callback`` joins its shard's due set (the script that
ended it adds it, due at once: ``finish.lua``, ``begin.lua``, ``cancel.lua``). A deliverer
(`spillway.deliverer`, in every worker) lists what is due, claims it for a lease
(``callback_claim.lua``: due again if the claim is never settled, so a delivery outlives the
process that tried it), POSTs, and settles the outcome under its claim's token
(``callback_settle.lua``): delivered, failed, or due again after a backoff.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from spillway.broker.batch import Batch
from spillway.broker.core import RedisCore
from spillway.broker.keys import ShardKeys
from spillway.records import CallbackStats

__all__ = ["CallbackOps", "Claim"]


@dataclass(frozen=True, slots=True)
class Claim:
    """A due webhook claimed for one delivery: its task's record as Redis holds it."""

    shard: int
    task_id: str
    token: str
    record: dict[str, str]


class CallbackOps:
    """The due webhooks of every shard, over a shared `RedisCore`."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def claim(
        self, shard: ShardKeys, token: str, *, limit: int, lease_ms: int
    ) -> list[Claim]:
        """Claim up to `limit` webhooks of `shard` that are due now."""
        now = self.core.deadline_ms(0)  # now, on Redis's clock
        due: list[str] = await self.core.run(
            lambda: self.core.client.zrangebyscore(shard.callbacks, "-inf", now, 0, limit)
        )
        ids = [i for i in due if isinstance(i, str)]
        if not ids:
            return []
        keys = [shard.callbacks, *(shard.task(i) for i in ids)]
        replies = await self.core.script("callback_claim", keys, [lease_ms, token, *ids])
        claims = []
        for item in replies:
            task_id, fields = str(item[0]), [str(v) for v in item[1:]]
            record = dict(zip(fields[::2], fields[1::2], strict=True))
            claims.append(Claim(shard.shard, task_id, token, record))
        return claims

    async def settle(self, outcomes: Sequence[Settled]) -> None:
        """Record each delivery's outcome (one round trip for all of them)."""

        def build(pipe: Batch) -> None:
            for o in outcomes:
                shard = self.core.keys.shard(o.claim.shard)
                keys = [shard.callbacks, shard.task(o.claim.task_id), shard.callback_counts]
                args = [o.claim.task_id, o.claim.token, o.kind, o.attempts, o.error, o.delay_ms]
                self.core.scripts.queue(pipe, "callback_settle", keys, args)

        if outcomes:
            await self.core.pipeline(build)

    async def due(self) -> int:
        """Webhooks waiting for a delivery (due now or later), over every shard."""
        return (await self.stats()).due

    async def stats(self) -> CallbackStats:
        """Waiting webhooks and tries by outcome, over every shard. The counts hash is read as
        untrusted: a value that is not a count is left out, a key of another type is empty."""
        due, tries = 0, {"delivered": 0, "retry": 0, "failed": 0}
        client = self.core.client
        for shard in self.core.keys.all_shards():
            due += int(await self._call(client.zcard, shard.callbacks))
            try:
                counts = await self._call(client.hgetall, shard.callback_counts)
            except ResponseError:  # WRONGTYPE: not ours
                counts = {}
            for outcome, value in counts.items():
                if outcome in tries and str(value).isdigit():
                    tries[outcome] += int(value)
        return CallbackStats(
            due=due, delivered=tries["delivered"], retried=tries["retry"], failed=tries["failed"]
        )

    async def _call(self, fn: Callable[[str], Awaitable[Any]], key: str) -> Any:
        return await self.core.run(lambda: fn(key))


@dataclass(frozen=True, slots=True)
class Settled:
    """How one claimed delivery went: delivered, retry (after `delay_ms`) or failed."""

    claim: Claim
    kind: str
    attempts: int
    error: str = ""
    delay_ms: int = 0
