"""Wake callers the moment a task becomes terminal: one pub/sub connection per process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

__all__ = ["Waiters"]

log = logging.getLogger("spillway.waiters")

_TERMINAL = frozenset({"succeeded", "dead", "cancelled"})


class Waiters:
    """Per-task completion channels, subscribed while someone waits on them.

    The finish script publishes on the task's channel after writing its outcome. A waiter
    subscribes first and reads the status second, so a completion between the two is never
    missed. If the pub/sub connection breaks, every waiter re-reads its task's status.
    """

    def __init__(
        self,
        connect: Callable[[], tuple[Redis, bool]],
        status: Callable[[str], Awaitable[str | None]],
    ) -> None:
        self._connect = connect
        self._status = status
        self._pubsub: PubSub | None = None
        self._owned: Redis | None = None  # a client made only for pub/sub, closed with it
        self._listener: asyncio.Task[None] | None = None
        self._events: dict[str, asyncio.Event] = {}  # channel -> set on any message
        self._counts: dict[str, int] = {}  # channel -> waiters on it
        self._lock = asyncio.Lock()

    async def wait(self, task_id: str, channel: str, timeout: float) -> bool:
        """True once the task is terminal; False after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = await self._subscribe(channel)
        try:
            while True:
                event.clear()
                if await self._status(task_id) in _TERMINAL:
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    async with asyncio.timeout(remaining):
                        await event.wait()
                except TimeoutError:
                    return await self._status(task_id) in _TERMINAL
        finally:
            await self._unsubscribe(channel)

    async def _subscribe(self, channel: str) -> asyncio.Event:
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self._new_pubsub()
            count = self._counts.get(channel, 0)
            if count == 0:
                self._events[channel] = asyncio.Event()
                try:
                    await self._pubsub.subscribe(channel)
                except (RedisError, OSError):
                    # The listener reconnects and resubscribes; the status read still decides.
                    log.warning("subscribe failed; falling back to status reads", exc_info=True)
            self._counts[channel] = count + 1
            if self._listener is None or self._listener.done():
                self._listener = asyncio.create_task(self._listen())
            return self._events[channel]

    async def _unsubscribe(self, channel: str) -> None:
        async with self._lock:
            count = self._counts.get(channel, 0) - 1
            if count > 0:
                self._counts[channel] = count
                return
            self._counts.pop(channel, None)
            self._events.pop(channel, None)
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(channel)

    async def _listen(self) -> None:
        backoff = 0.05
        while self._counts:
            pubsub = self._pubsub
            if pubsub is None:
                return
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                backoff = 0.05
            except (RedisError, OSError):
                # Connection lost: wake everyone to re-read status, then resubscribe.
                for event in self._events.values():
                    event.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                async with self._lock:
                    await self._drop_pubsub()
                    self._pubsub = self._new_pubsub()
                    if self._counts:
                        with contextlib.suppress(RedisError, OSError):
                            await self._pubsub.subscribe(*self._counts)
                continue
            if message is not None:
                woken = self._events.get(str(message["channel"]))
                if woken is not None:
                    woken.set()

    def _new_pubsub(self) -> PubSub:
        client, owned = self._connect()
        self._owned = client if owned else None
        return client.pubsub()

    async def _drop_pubsub(self) -> None:
        pubsub, owned = self._pubsub, self._owned
        self._pubsub = self._owned = None
        with contextlib.suppress(RedisError, OSError):
            if pubsub is not None:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            if owned is not None:
                await owned.aclose()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._listener
        await self._drop_pubsub()
