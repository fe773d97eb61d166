"""`FeedOps`: each shard's feed of task status changes, kept alive and read.

While a shard's feed stream (`ShardKeys.feed`) exists, the scripts that change a task's status
append each change to it (``feed.lua``). An API process whose admins follow a queue's events
(`spillway.feed`) keeps every shard's feed alive (``feed_keep.lua``: a time to live it renews)
and reads them, one blocking read per shard for all its followers. What the feed holds is read
as untrusted: an entry that is not a well-formed change is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

from spillway.broker.batch import Batch
from spillway.broker.core import RedisCore
from spillway.broker.types import stream_items
from spillway.records import TaskStatus

__all__ = ["Change", "FeedOps"]

_STATUSES = frozenset(TaskStatus)


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a shard's feed: a task's new status."""

    shard: int
    entry_id: str
    task_id: str
    queue: str
    task_type: str
    status: TaskStatus
    attempts: int


def _change(shard: int, entry_id: Any, fields: Any) -> Change | None:
    if isinstance(fields, list):
        fields = dict(zip(fields[::2], fields[1::2], strict=False))
    if not isinstance(fields, dict) or not isinstance(entry_id, str):
        return None
    task_id, queue, task_type = fields.get("id"), fields.get("queue"), fields.get("type")
    status, attempts = fields.get("status"), fields.get("attempts", "")
    if not (isinstance(task_id, str) and 0 < len(task_id) <= 64):
        return None  # the marker entry feed_keep.lua starts a feed with, or not ours
    if not (isinstance(queue, str) and isinstance(task_type, str) and status in _STATUSES):
        return None
    if not (isinstance(attempts, str) and attempts.isdigit() and len(attempts) < 10):
        return None
    return Change(shard, entry_id, task_id, queue, task_type, TaskStatus(status), int(attempts))


class FeedOps:
    """Every shard's feed, over a shared `RedisCore`."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def keep(self, ttl_ms: int) -> list[tuple[str, bool]]:
        """Make every shard's feed exist for `ttl_ms` more: for each, the id of its newest
        entry, and whether it had to be made (so changes since the last call were missed)."""
        await self.core.ready()  # a cluster's slot map, before the scripts go to its nodes
        shards = self.core.keys.all_shards()

        def build(pipe: Batch) -> None:
            for shard in shards:
                self.core.scripts.queue(pipe, "feed_keep", [shard.feed], [ttl_ms])

        return [(str(r[0]), bool(int(r[1]))) for r in await self.core.pipeline(build)]

    async def read(
        self, shard: int, after: str, count: int, block_ms: int
    ) -> tuple[list[Change], str]:
        """Up to `count` entries of `shard`'s feed after entry `after`, waiting up to
        `block_ms` for the first, and the id of the last entry read (`after` if none came)."""
        key = self.core.keys.shard(shard).feed
        client = self.core.blocking
        async with self.core.guard(block_ms / 1000 + self.core.settings.redis_timeout * 2):
            if isinstance(client, RedisCluster):
                node = client.get_node_from_key(key)
                reply = await client.execute_command(
                    "XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", key, after,
                    target_nodes=node,
                )  # fmt: skip
            else:
                reply = await client.xread({key: after}, count=count, block=block_ms)
        entries = [e for _, batch in stream_items(reply) for e in batch or ()]
        return self._changes(shard, entries, after)

    async def since(self, shard: int, after: str, count: int) -> tuple[bool, list[Change], str]:
        """Whether `shard`'s feed still holds entry `after`, up to `count` entries after it,
        and the id of the last entry read (`after` if none): a follower's catch-up."""
        key = self.core.keys.shard(shard).feed

        async def run() -> list[Any]:
            async with self.core.client.pipeline(transaction=False) as pipe:
                pipe.xrange(key, after, after, count=1)
                pipe.xrange(key, f"({after}", "+", count=count)
                replies: list[Any] = await pipe.execute()
                return replies

        held, entries = await self.core.run(run)
        changes, last = self._changes(shard, entries or [], after)
        return bool(held), changes, last

    @staticmethod
    def _changes(shard: int, entries: Sequence[Any], after: str) -> tuple[list[Change], str]:
        """The well-formed changes among `entries`, and the id of the last entry (skipped
        ones included: a follower moves past them); `after` when there are none."""
        out = []
        for entry in entries:
            change = _change(shard, entry[0], entry[1])
            if change is not None:
                out.append(change)
        return out, (str(entries[-1][0]) if entries else after)
