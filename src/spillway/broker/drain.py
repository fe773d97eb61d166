"""`DrainSampler`: each lane's backlog and drained count, sampled about once a second for the
`Pacer` (`spillway.pacing`), which turns them into honest ``Retry-After`` values.

One pipeline per sample, never one command per request: for each lane and shard stream,
``XINFO STREAM`` (its ``length``, and ``entries-added``: every entry ever appended) and the
due set's ``ZCARD``. A lane's backlog is the sum of lengths and due sets (what `accept.lua`
counts against the limit); what it drained is the sum of ``entries-added - length``, the
entries that left its streams (finished, cancelled, dead-lettered; a retry leaves and comes
back). On a cluster the pipeline goes to each shard's node. ``entries-added`` needs Redis
>= 7.0: on an older server the rate stays unmeasured and the waits stay short (`Bounds.base`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.exceptions import ResponseError

from spillway.broker.core import RedisCore
from spillway.errors import BrokerUnavailable
from spillway.pacing import Pacer

__all__ = ["DrainSampler"]

log = logging.getLogger("spillway.broker")


class DrainSampler:
    """Feeds a `Pacer` with samples of the application's lanes, every `interval` seconds."""

    def __init__(self, core: RedisCore, pacer: Pacer) -> None:
        self.core = core
        self.pacer = pacer
        self.interval = core.settings.drain_sample_interval
        self._task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()
        self.rounds: dict[str, int] = {}

    def start(self) -> None:
        """Sample in the background until `stop` (a no-op when already sampling)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="spillway-drain-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failed = False
        while True:
            try:
                # The server checked first: a cluster client must learn its slots before
                # concurrent use (`RedisCore.check_server`).
                await self.core.ready()
                figures = await self.sample()
                now = time.monotonic()
                self.pacer.observe(figures, now)
                self.pacer.observe_rounds(self.rounds, now)
                failed = False
            except BrokerUnavailable as exc:
                # The pacer keeps its last figures; the refusals of a down Redis are 503s.
                log.debug("drain sample skipped: %s", exc)
            except Exception:
                # Pacing is advice: a bug here must not end it, nor flood the log each second.
                if not failed:
                    log.exception("drain sample failed; Retry-After uses its last figures")
                failed = True
            await asyncio.sleep(self.interval)

    async def sample(self) -> dict[str, tuple[int, int]]:
        """lane -> (backlog, drained so far), for the lanes whose every shard could be read."""
        lanes = list(self.core.queues())
        shards = self.core.keys.all_shards()

        tracked = self.core.settings.tracks_callers
        per = 4 if tracked else 2  # replies per lane and shard

        async def run() -> list[Any]:
            async with self.core.client.pipeline(transaction=False) as pipe:
                for lane in lanes:
                    for s in shards:
                        pipe.xinfo_stream(s.stream(lane))
                        pipe.zcard(s.due(lane))
                        if tracked:
                            pipe.zcard(s.held(lane))
                            pipe.hget(s.rounds(lane), "")
                return list(await pipe.execute(raise_on_error=False))

        replies = await self.core.run(run)
        out: dict[str, tuple[int, int]] = {}
        rounds: dict[str, int] = {}
        for i, lane in enumerate(lanes):
            backlog = drained = turns = 0
            for j, s in enumerate(shards):
                info, due, *held = replies[(i * len(shards) + j) * per :][:per]
                figures = _figures(info, due, *held)
                if isinstance(figures, str):
                    self._skip(s.stream(lane), figures)
                    break
                backlog += figures[0]
                drained += figures[1]
                turns += figures[2]
            else:
                out[lane] = (backlog, drained)
                if tracked:
                    rounds[lane] = turns
        #: lane -> the sum of its shards' current rounds (callers tracked only), for
        #: `Pacer.observe_rounds`.
        self.rounds = rounds
        return out

    def _skip(self, stream: str, why: str) -> None:
        """Log once per stream: a bad key must not flood the log once a second."""
        if stream not in self._warned:
            self._warned.add(stream)
            log.warning("drain rate: skipping %s: %s", stream, why)


def _figures(info: Any, due: Any, held: Any = 0, rounds: Any = None) -> tuple[int, int, int] | str:
    """(backlog, drained, current round) of one shard lane from its replies, or why they
    cannot be used: what Redis holds there is not a stream Spillway wrote, or the server cannot
    say. Held tasks (callers tracked) count in the backlog; they drain once started."""
    if isinstance(info, ResponseError) and "no such key" in str(info).lower():
        info = {"length": 0, "entries-added": 0}  # nothing accepted there yet
    for reply in (info, due, held, rounds):
        if isinstance(reply, ResponseError):
            return f"cannot be read: {str(reply)[:80]}"
        if isinstance(reply, Exception):
            raise BrokerUnavailable(f"drain sample: {reply}")
    if not isinstance(info, dict):
        return "XINFO STREAM did not answer a map"
    if "entries-added" not in info:
        return "no entries-added (Redis < 7.0): its drain rate is not measured"
    try:
        length, delayed, added = (
            _count(info.get("length")),
            _count(due) + _count(held),
            _count(info["entries-added"]),
        )
        round_ = 0 if rounds is None else int(float(rounds))
    except ValueError:
        return "a figure is not a count"
    return length + delayed, max(0, added - length), round_


def _count(value: Any) -> int:
    """A non-negative integer from Redis, else `ValueError` (a count we did not write)."""
    if isinstance(value, bool) or not isinstance(value, int | str | bytes):
        raise ValueError(value)
    n = int(value)
    if n < 0:
        raise ValueError(value)
    return n
