"""Wake callers the moment a task's status changes: one pub/sub connection per process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from spillway.broker.types import connection_lost
from spillway.records import TERMINAL

__all__ = ["Waiters"]

log = logging.getLogger("spillway.waiters")

# Seconds between status reads of a task whose record could not be marked 'waited' (wait.lua).
POLL = 0.25


@contextlib.contextmanager
def _unless_lost() -> Iterator[None]:
    """Swallow the error of a lost pub/sub connection (the listener makes a new one)."""
    try:
        yield
    except Exception as exc:
        if not connection_lost(exc):
            raise


class Waiters:
    """Per-task channels, subscribed while someone waits on them or watches them.

    The scripts publish on a task's channel after each change of its status that someone
    listens for: its end, once a waiter has marked its record (``wait.lua``, the waiter's
    status read) or a watcher has (``watch.lua``), and ``running`` and ``failed`` for
    watchers. A waiter subscribes first and reads (and marks) second, so a change between the
    two is never missed. Each subscriber has its own
    event, set on any message of its channel: one subscriber's wake-up never clears
    another's. If the pub/sub connection breaks, every subscriber is woken to re-read.
    """

    def __init__(
        self,
        connect: Callable[[], tuple[Redis, bool]],
        status: Callable[[str], Awaitable[tuple[str | None, bool]]],
    ) -> None:
        self._connect = connect
        self._status = status
        self._pubsub: PubSub | None = None
        self._owned: Redis | None = None  # a client made only for pub/sub, closed with it
        self._listener: asyncio.Task[None] | None = None
        self._events: dict[str, set[asyncio.Event]] = {}  # channel -> one per subscriber
        self._lock = asyncio.Lock()

    async def wait(self, task_id: str, channel: str, timeout: float) -> bool:
        """True once the task is terminal; False after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self.watch(channel) as event:
            while True:
                event.clear()
                status, marked = await self._status(task_id)
                if status in TERMINAL:
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                # Unmarked, its end would not be published: read again every so often.
                last = marked or remaining <= POLL
                try:
                    async with asyncio.timeout(remaining if last else POLL):
                        await event.wait()
                except TimeoutError:
                    if last:
                        return (await self._status(task_id))[0] in TERMINAL

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[asyncio.Event]:
        """An event set on each message of `channel` (and when the connection breaks), for as
        long as the block runs; the subscription is shared with the channel's other
        subscribers. Clear it before reading what it guards."""
        event = await self._subscribe(channel)
        try:
            yield event
        finally:
            await self._unsubscribe(channel, event)

    async def _subscribe(self, channel: str) -> asyncio.Event:
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self._new_pubsub()
            event = asyncio.Event()
            subscribers = self._events.get(channel, set())
            if not subscribers:
                try:
                    await self._pubsub.subscribe(channel)
                except Exception as exc:
                    if not connection_lost(exc):
                        raise
                    # The listener reconnects and resubscribes; the status read still decides.
                    log.warning("subscribe failed; falling back to status reads", exc_info=True)
            subscribers.add(event)
            self._events[channel] = subscribers
            if self._listener is None or self._listener.done():
                self._listener = asyncio.create_task(self._listen())
            return event

    async def _unsubscribe(self, channel: str, event: asyncio.Event) -> None:
        async with self._lock:
            subscribers = self._events.get(channel, set())
            subscribers.discard(event)
            if subscribers:
                return
            self._events.pop(channel, None)
            if self._pubsub is not None:
                with _unless_lost():
                    await self._pubsub.unsubscribe(channel)

    async def _listen(self) -> None:
        backoff = 0.05
        while self._events:
            pubsub = self._pubsub
            if pubsub is None:
                return
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                backoff = 0.05
            except Exception as exc:
                if not connection_lost(exc):
                    raise
                # Connection lost: wake everyone to re-read status, then resubscribe.
                for subscribers in self._events.values():
                    for event in subscribers:
                        event.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                async with self._lock:
                    await self._drop_pubsub()
                    self._pubsub = self._new_pubsub()
                    if self._events:
                        with _unless_lost():
                            await self._pubsub.subscribe(*self._events)
                continue
            if message is not None:
                for event in self._events.get(str(message["channel"]), ()):
                    event.set()

    def _new_pubsub(self) -> PubSub:
        client, owned = self._connect()
        self._owned = client if owned else None
        return client.pubsub()

    async def _drop_pubsub(self) -> None:
        pubsub, owned = self._pubsub, self._owned
        self._pubsub = self._owned = None
        with _unless_lost():
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
