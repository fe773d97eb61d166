"""`Sweep`: walk the tasks waiting in some lanes, a bounded page at a time (bulk cancel).

A page reads at most `limit` entries: stream entries (tasks queued, or delivered and running),
due-set members (tasks delayed, or waiting for a retry) and held-set members (callers' tasks
waiting for their turn: docs/architecture.md#callers), lane by lane, shard by shard,
and the record fields a filter needs for each. Where it stopped is a cursor,
``lane|shard|part|position``, that the next page resumes from; positions survive the deletions
a cancel makes (a stream is read after an entry id, a sorted set after a score and member), so a
sweep that cancels as it goes skips nothing and never reads an entry twice. What it reads is
untrusted: entries without a task id, members that are not task ids and records that are gone
are counted as examined and left out.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spillway.broker.core import RedisCore
from spillway.broker.keys import ShardKeys
from spillway.broker.types import as_int

__all__ = ["Sweep", "SweepPage", "Waiting"]

_TASK_ID = re.compile(r"[0-9a-f]{32}")
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
# Due and held sets first: a task promoted or started meanwhile moves on to the stream, which
# is read after. (Sorted, too: a cursor's position is found by bisection.)
_PARTS = ("due", "held", "stream")


@dataclass(frozen=True, slots=True)
class Waiting:
    """A task found in a lane, with the fields of its record a filter reads ('' if missing)."""

    task_id: str
    lane: str
    status: str
    type: str
    created_ms: int | None


@dataclass(frozen=True, slots=True)
class SweepPage:
    """One page of a sweep: what it found, how many entries it read, where the next page
    starts (None: every lane is done), and the server's clock when it ran (ms)."""

    found: list[Waiting]
    examined: int
    cursor: str | None
    now_ms: int


_Position = tuple[str, int, str]  # lane, shard, part


class Sweep:
    """Pages of the tasks waiting in some lanes, over a shared `RedisCore`."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def page(self, lanes: Sequence[str], cursor: str | None, limit: int) -> SweepPage:
        """The next page after `cursor` (None: from the start); `ValueError` for a cursor this
        sweep could not have handed out for these shards."""
        shards = self.core.keys.shards
        positions = [(lane, k, part) for lane in sorted(lanes) for k in range(shards)
                     for part in _PARTS]  # fmt: skip
        i, after = _resume(positions, cursor, shards)
        now_ms = await self._now_ms()
        found: list[Waiting] = []
        examined = 0
        while i < len(positions) and examined < limit:
            lane, k, part = positions[i]
            shard = self.core.keys.shard(k)
            wanted = limit - examined
            if part == "stream":
                ids, after = await self._stream(shard, lane, after, wanted)
            else:
                key = shard.due(lane) if part == "due" else shard.held(lane)
                ids, after = await self._members(key, after, wanted)
            examined += len(ids)
            found += await self._records(shard, lane, [t for t in ids if t is not None])
            if len(ids) < wanted:  # this part is done: the next starts from its beginning
                i, after = i + 1, None
        cursor = None if i >= len(positions) else "|".join([*map(str, positions[i]), after or ""])
        return SweepPage(found, examined, cursor, now_ms)

    async def _now_ms(self) -> int:
        seconds, micros = await self.core.run(self.core.client.time)
        return int(seconds) * 1000 + int(micros) // 1000

    async def _stream(
        self, shard: ShardKeys, lane: str, after: str | None, count: int
    ) -> tuple[list[str | None], str | None]:
        """Up to `count` entries after the entry id `after`: their task ids (None for an entry
        without one) and the last entry id read."""
        start = f"({after}" if after else "-"
        key = shard.stream(lane)
        entries: list[Any] = await self.core.run(
            lambda: self.core.client.xrange(key, start, "+", count=count)
        )
        ids = [_task_id((fields or {}).get("id")) for _, fields in entries]
        return ids, (str(entries[-1][0]) if entries else after)

    async def _members(
        self, key: str, after: str | None, count: int
    ) -> tuple[list[str | None], str | None]:
        """Up to `count` members of a sorted set after the position `after` (``score:member``),
        in the set's order: by score, then by member."""
        low, member = ("-inf", "") if after is None else _set_position(after)

        async def read(skip: int) -> list[tuple[str, float]]:
            page: list[Any] = await self.core.client.zrangebyscore(
                key, low, "+inf", start=skip, num=count, withscores=True
            )
            return [(str(pair[0]), float(pair[1])) for pair in page]

        fresh: list[tuple[str, float]] = []
        skip = 0
        while len(fresh) < count:
            page: list[tuple[str, float]] = await self.core.run(functools.partial(read, skip))
            # Members at the cursor's own score sort by name: those up to its member were read.
            fresh += [(m, s) for m, s in page if not (after and repr(s) == low and m <= member)]
            if len(page) < count:
                break
            skip += len(page)
        fresh = fresh[:count]
        position = f"{fresh[-1][1]!r}:{fresh[-1][0]}" if fresh else after
        return [_task_id(m) for m, _ in fresh], position

    async def _records(self, shard: ShardKeys, lane: str, task_ids: list[str]) -> list[Waiting]:
        if not task_ids:
            return []

        async def read() -> list[Any]:
            async with self.core.client.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    pipe.hmget(shard.task(task_id), ["status", "type", "created_at"])
                return list(await pipe.execute(raise_on_error=False))

        out = []
        for task_id, fields in zip(task_ids, await self.core.run(read), strict=True):
            if not isinstance(fields, list) or fields[0] is None:
                continue  # gone since it was read, or a key of another type
            status, task_type, created = fields
            created_ms = as_int(created) if str(created or "").isdigit() else None
            out.append(Waiting(task_id, lane, str(status), str(task_type or ""), created_ms))
        return out


def _task_id(value: object) -> str | None:
    return value if isinstance(value, str) and _TASK_ID.fullmatch(value) else None


def _set_position(after: str) -> tuple[str, str]:
    score, sep, member = after.partition(":")
    try:
        float(score)
    except ValueError:
        raise ValueError("the cursor's sorted-set position is malformed") from None
    if not sep:
        raise ValueError("the cursor's sorted-set position is malformed")
    return score, member


def _resume(positions: list[_Position], cursor: str | None, shards: int) -> tuple[int, str | None]:
    """Where a page starts: the index of the cursor's position, and the point within it."""
    if cursor is None:
        return 0, None
    parts = cursor.split("|")
    if len(parts) != 4 or not parts[1].isdigit() or parts[2] not in _PARTS:
        raise ValueError("the cursor is not one a bulk cancel handed out")
    lane, k, part, after = parts[0], int(parts[1]), parts[2], parts[3] or None
    if k >= shards:
        raise ValueError("the cursor names a shard this server does not have")
    if after is not None:
        if part == "stream" and not _STREAM_ID.fullmatch(after):
            raise ValueError("the cursor's stream position is malformed")
        if part != "stream":
            _set_position(after)
    at = (lane, k, part)
    i = bisect.bisect_left(positions, at)
    # A lane gone from the list since (it cannot be, but the list is read each page): the
    # next position after it, from its beginning.
    return (i, after) if i < len(positions) and positions[i] == at else (i, None)
