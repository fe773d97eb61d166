"""The Lua scripts in this folder, loaded once and called by SHA (reloaded after NOSCRIPT)."""

from __future__ import annotations

import hashlib
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from spillway.broker.wire import Batch

__all__ = ["Scripts"]

NAMES = ("accept", "begin", "finish", "due", "promote", "cancel", "replay", "renew", "release")


class Scripts:
    """Every script by name; `call` runs one, `queue` adds one to a pipeline."""

    def __init__(self) -> None:
        folder = files("spillway.broker").joinpath("scripts")
        self.source = {n: folder.joinpath(f"{n}.lua").read_text() for n in NAMES}
        self.sha = {n: hashlib.sha1(s.encode()).hexdigest() for n, s in self.source.items()}  # noqa: S324

    async def load(self, client: Redis) -> None:
        """Load every script into the server's script cache (after a restart or a flush)."""
        async with client.pipeline(transaction=False) as pipe:
            for source in self.source.values():
                pipe.script_load(source)
            await pipe.execute()

    async def call(self, client: Redis, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha[name], len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client)
            return await client.evalsha(self.sha[name], len(keys), *keys, *args)

    def queue(self, pipe: Batch, name: str, keys: list[str], args: list[Any]) -> None:
        pipe.evalsha(self.sha[name], len(keys), *keys, *args)
