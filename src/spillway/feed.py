"""A queue's task status changes as one stream (``GET /queues/{name}/events``,
`Spillway.queue_events`), for operators, dashboards and tools that follow a whole queue.

While someone follows, each shard's feed (`ShardKeys.feed`) exists and the scripts append every
status change to it (``feed.lua``): queued (accepted, or replayed from the dead letters),
running, failed (a retry to come), and each final status. A process keeps the feeds alive
while it has followers (a time to live it renews, so a feed outlives a reconnect) and reads
them once for all of them (`FeedHub`): one blocking read per shard into a ring of recent
changes that each follower walks at its own pace, keeping what its filter selects.

An event's id is the follower's position in every shard's feed (`encode`). A follower that
comes back with it (SSE's ``Last-Event-ID``) gets each change since, read back from the feeds,
then the live ones: nothing missed and nothing twice while the feeds still hold its position
(the last 10,000 or so changes of each shard, kept two minutes after the last follower
leaves). Otherwise a *gap* event says that changes were missed, and the stream goes on.
A follower that falls behind the ring catches up the same way.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Sequence

from spillway.broker.feed import Change, FeedOps
from spillway.errors import BrokerUnavailable
from spillway.lanes import parse_lane
from spillway.records import QueueEvent, TaskStatus, from_ms

__all__ = ["FeedHub", "decode", "encode", "follow"]

log = logging.getLogger("spillway.feed")

Position = tuple[int, int]  # a feed entry's id, <ms>-<seq>

_TTL_MS = 120_000  # how long a feed outlives the last renewal
_RING = 10_000  # changes the hub keeps for its followers
_PAGE = 500  # entries per read

_EVENT_ID = re.compile(r"\d{1,15}(?:\.\d{1,15}(?:-\d{1,12})?)+")


def _position(entry_id: str) -> Position:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _entry_id(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def encode(positions: Sequence[Position]) -> str:
    """An event id: the newest entry time, then each shard's position as its distance back
    from it (and ``-<seq>`` when not 0), dot-separated. A few characters a shard."""
    base = max(ms for ms, _ in positions)
    parts = [str(base)]
    parts += [f"{base - ms}-{seq}" if seq else str(base - ms) for ms, seq in positions]
    return ".".join(parts)


def decode(value: str, shards: int) -> list[Position] | None:
    """The positions an event id holds; None for an id this deployment did not write."""
    if len(value) > 16 + 30 * shards or not _EVENT_ID.fullmatch(value):
        return None
    head, *parts = value.split(".")
    if len(parts) != shards:
        return None
    base, out = int(head), []
    for part in parts:
        back, _, seq = part.partition("-")
        if int(back) > base:
            return None
        out.append((base - int(back), int(seq or 0)))
    return out


class FeedHub:
    """The feed readers of one process, shared by all its followers: started by the first
    to join, stopped when the last leaves."""

    def __init__(
        self,
        ops: FeedOps,
        shards: int,
        *,
        block_ms: int,
        keep_every: float = 30.0,
        ring: int = _RING,
    ) -> None:
        self.ops = ops
        self.shards = shards
        self._block_ms = block_ms
        self._keep_every = keep_every
        # A change, or None where changes were missed (a feed made again while followed).
        self._ring: collections.deque[Change | None] = collections.deque(maxlen=ring)
        self._end = 0  # the sequence number of the next change; the ring ends just before it
        self._positions: list[str] = []  # how far the readers have read each shard's feed
        self._wake = asyncio.Event()
        self._followers = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._run = 0  # which start of the readers is current: an older one's loops end
        self._starting = asyncio.Lock()

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def join(self) -> tuple[int, list[Position]]:
        """Count a follower in (the first starts the readers): the sequence number of the next
        change, and the positions the readers have reached. `BrokerUnavailable` if the feeds
        cannot be kept."""
        async with self._starting:
            if not self._tasks:
                self._positions = [newest for newest, _ in await self.ops.keep(_TTL_MS)]
                self._run += 1
                run = self._run
                self._tasks = [asyncio.create_task(self._keep(run), name="spillway-feed-keep")]
                self._tasks += [
                    asyncio.create_task(self._read(run, k), name=f"spillway-feed-{k}")
                    for k in range(self.shards)
                ]
            self._followers += 1
        return self._end, [_position(p) for p in self._positions]

    async def leave(self) -> None:
        self._followers -= 1
        if self._followers == 0:
            await self.stop()

    async def stop(self) -> None:
        """Stop the readers (the last follower left, or the application closes)."""
        tasks, self._tasks = self._tasks, []
        self._run += 1
        for task in tasks:
            task.cancel()
        # A read's cancellation is now and then lost inside the Redis client (seen once in a
        # few runs: the reader read on); its loop then ends after that read, by `_run`.
        await asyncio.gather(*tasks, return_exceptions=True)
        self._ring.clear()
        self._wake.set()  # followers still waiting see the hub stopped

    def after(self, cursor: int) -> tuple[list[Change | None], int, bool]:
        """The changes from sequence number `cursor` on, the cursor after them, and whether
        changes before them have left the ring (the follower catches up from the feeds)."""
        first = self._end - len(self._ring)
        if cursor < first:
            return [], self._end, True
        return list(itertools.islice(self._ring, cursor - first, None)), self._end, False

    async def wait(self, cursor: int, timeout: float) -> None:
        """Until a change at or after `cursor` arrives, the hub stops, or `timeout` seconds."""
        wake = self._wake
        if self._end > cursor or not self._tasks:
            return
        try:
            async with asyncio.timeout(timeout):
                await wake.wait()
        except TimeoutError:
            pass

    async def _keep(self, run: int) -> None:
        while run == self._run:
            await asyncio.sleep(self._keep_every)
            try:
                kept = await self.ops.keep(_TTL_MS)
            except BrokerUnavailable as exc:
                log.warning("feed: could not renew the feeds: %s", exc)
                continue
            if run == self._run and any(made for _, made in kept):
                # Expired (renewals failed for its whole TTL) or lost by Redis: changes went
                # unwritten until now. The followers are told, as a resuming one would be.
                log.warning("feed: a feed had to be made again; its followers get a gap")
                self._append([None])

    async def _read(self, run: int, shard: int) -> None:
        backoff = 0.1
        while run == self._run:
            try:
                changes, last = await self.ops.read(
                    shard, self._positions[shard], _PAGE, self._block_ms
                )
            except BrokerUnavailable as exc:
                if backoff == 0.1:
                    log.warning("feed: reading shard %d failed: %s", shard, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if run != self._run:
                return  # stopped while it read: the ring is no longer this run's
            self._positions[shard] = last
            if changes:
                self._append(changes)

    def _append(self, changes: Sequence[Change | None]) -> None:
        self._ring.extend(changes)
        self._end += len(changes)
        self._wake.set()
        self._wake = asyncio.Event()


class _Follower:
    """One follower's position in every shard's feed, and its filter."""

    def __init__(
        self,
        positions: list[Position],
        queue: str,
        statuses: Collection[TaskStatus] | None,
        types: Collection[str] | None,
    ) -> None:
        self.positions = positions
        self.queue = queue
        self.statuses = frozenset(statuses) if statuses else None
        self.types = frozenset(types) if types else None

    def see(self, change: Change) -> QueueEvent | None:
        """Move past `change`; the event it is, unless seen before or filtered out."""
        at = _position(change.entry_id)
        if at <= self.positions[change.shard]:
            return None  # seen already: read back from the feed, then met again in the ring
        self.positions[change.shard] = at
        lane = parse_lane(change.queue)  # a lane: the queue, a priority, perhaps a limited type
        if lane.queue != self.queue:
            return None
        if self.statuses is not None and change.status not in self.statuses:
            return None
        if self.types is not None and change.task_type not in self.types:
            return None
        return QueueEvent(
            encode(self.positions),
            task_id=change.task_id,
            queue=lane.queue,
            priority=lane.priority,
            task_type=change.task_type,
            status=change.status,
            attempts=change.attempts,
            at=from_ms(str(at[0])),
        )

    def gap(self) -> QueueEvent:
        return QueueEvent(encode(self.positions), gap=True)

    async def catch_up(self, ops: FeedOps) -> AsyncIterator[QueueEvent]:
        """Every change the feeds hold after this follower's positions, after one gap event
        if a shard's feed no longer holds its position."""
        gapped = False
        for shard in range(len(self.positions)):
            after, first = _entry_id(self.positions[shard]), True
            while True:
                held, changes, last = await ops.since(shard, after, _PAGE)
                if first and not held and not gapped:
                    gapped = True
                    yield self.gap()
                first = False
                for change in changes:
                    event = self.see(change)
                    if event is not None:
                        yield event
                if last == after:
                    break
                after = last


async def follow(
    hub: FeedHub,
    queue: str,
    *,
    statuses: Collection[TaskStatus] | None = None,
    types: Collection[str] | None = None,
    last_event_id: str | None = None,
    timeout: float = 300.0,
    joined: asyncio.Event | None = None,
) -> AsyncGenerator[QueueEvent, None]:
    """`queue`'s changes (of `statuses` and `types` only, if given) for `timeout` seconds,
    from now or, with `last_event_id`, from that event on (see the module's docstring).
    `joined` is set once every change from then on will be seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    cursor, positions = await hub.join()
    if joined is not None:
        joined.set()
    try:
        follower = _Follower(positions, queue, statuses, types)
        behind = last_event_id is not None
        if last_event_id is not None:
            resumed = decode(last_event_id, hub.shards)
            if resumed is None:
                behind = False
                yield follower.gap()  # not an id of ours: the stream starts now
            else:
                follower.positions = resumed
        while hub.running:
            if behind:
                # The feeds hold every change the ring had before `cursor` (and perhaps some
                # after it: `see` passes over those when the ring brings them again).
                async for event in follower.catch_up(hub.ops):
                    yield event
            changes, cursor, behind = hub.after(cursor)
            if behind:
                continue  # it fell out of the ring: from the feeds first
            for change in changes:
                seen = follower.gap() if change is None else follower.see(change)
                if seen is not None:
                    yield seen
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await hub.wait(cursor, remaining)
    finally:
        await hub.leave()
