"""The Lua scripts in this folder, loaded once and called by SHA (reloaded after NOSCRIPT)."""

from __future__ import annotations

import hashlib
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from spillway.broker.batch import Batch

__all__ = ["Scripts"]

NAMES = (
    "accept", "begin", "finish", "due", "promote", "cancel", "replay", "renew", "release", "lease",
    "take", "paused", "schedule", "watch", "wait", "callback_claim", "callback_settle",
    "feed_keep",
)  # fmt: skip

# The scripts that change a task's status: each starts with feed.lua's two functions, which
# append the change to the shard's feed while an admin follows it (spillway.feed).
FEEDING = frozenset({"accept", "begin", "take", "finish", "cancel", "replay"})
# The scripts that start deliveries: start.lua's functions follow feed.lua's.
STARTING = frozenset({"begin", "take"})

# Scripts that move work along or free memory. Over `maxmemory` (noeviction) Redis refuses any
# script's first write unless it is flagged allow-oom, and then nothing could ever finish and
# free room. `accept` is deliberately not among them: a full Redis refuses new work (503).
ALLOW_OOM = frozenset(
    {
        "begin",
        "take",
        "finish",
        "promote",
        "cancel",
        "renew",
        "release",
        "due",
        "lease",
        "paused",
        "wait",
        "callback_settle",
    }
)


class Scripts:
    """Every script by name; `call` runs one, `queue` adds one to a pipeline."""

    def __init__(self) -> None:
        folder = files("spillway.broker").joinpath("scripts")
        feed, start = (folder.joinpath(f"{n}.lua").read_text() for n in ("feed", "start"))
        self._plain = {
            n: (feed if n in FEEDING else "")
            + (start if n in STARTING else "")
            + folder.joinpath(f"{n}.lua").read_text()
            for n in NAMES
        }
        self.use_flags(False)

    def use_flags(self, enabled: bool) -> None:
        """Declare script flags (a `#!lua` line, Redis >= 7.0; older servers reject it)."""
        self.source = {
            n: (f"#!lua flags=allow-oom\n{s}" if enabled and n in ALLOW_OOM else s)
            for n, s in self._plain.items()
        }
        self.sha = {n: hashlib.sha1(s.encode()).hexdigest() for n, s in self.source.items()}  # noqa: S324

    async def load(self, client: Redis | RedisCluster) -> None:
        """Load every script into the script cache (of every primary, on a cluster).

        Needed at start, and again after a restart, a flush or a failover (the cache is not
        replicated).
        """
        for source in self.source.values():
            await client.script_load(source)

    async def call(
        self, client: Redis | RedisCluster, name: str, keys: list[str], args: list[Any]
    ) -> Any:
        try:
            return await client.evalsha(self.sha[name], len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client)
            return await client.evalsha(self.sha[name], len(keys), *keys, *args)

    def queue(self, pipe: Batch, name: str, keys: list[str], args: list[Any]) -> None:
        pipe.evalsha(self.sha[name], len(keys), *keys, *args)
