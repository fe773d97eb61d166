"""How long a refused (or crowding) client should wait: `Retry-After` from the backlog and the
measured drain rate, jittered and bounded. Pure: no Redis here.

`spillway.broker.drain` samples every lane's backlog and drained count about once a second and
hands them to `Pacer.observe`, which keeps an EWMA of each lane's drain rate (`DrainRate`). The
accept writer asks `Pacer.retry_after` when a lane refuses a task (429), and the API's 202
writer consults `Pacer.slow`, empty unless a lane is above the slow-down threshold.

The formula (docs/architecture.md#retry-after): the time the backlog above the slow-down
threshold takes to drain at the measured rate, ``(backlog - slow_down_at * limit) / rate``,
clamped to ``[low, high]`` (no drain at all: ``high``; no measurement yet: ``2 * low``),
then drawn uniformly from ``[base * (1 - jitter), base * (1 + jitter)]`` within the bounds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Bounds", "DrainRate", "Pacer", "drain_seconds", "header_seconds", "spread"]

#: A uniform draw in [a, b]: `random.uniform`, or a fixed one in tests.
Draw = Callable[[float, float], float]


def spread(base: float, draw: Draw = random.uniform) -> float:
    """A short wait with no drain data behind it (Redis down, no sample yet): from `base` to
    three times it, so refused clients do not all come back in the same second."""
    return draw(base, 3 * base)


def header_seconds(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds (RFC 9110 delay-seconds), at least 1."""
    return str(max(1, round(seconds)))


def drain_seconds(excess: float, rate: float | None) -> float | None:
    """Seconds for `excess` tasks (at least one) to drain at `rate` tasks a second: infinite
    when nothing drains, None when the rate is not measured yet."""
    if rate is None:
        return None
    if rate <= 0:
        return math.inf
    return max(excess, 1.0) / rate


@dataclass(frozen=True, slots=True)
class Bounds:
    """The bounds and the jitter of every computed ``Retry-After`` (seconds)."""

    low: float = 1.0
    high: float = 60.0
    jitter: float = 0.5

    def base(self, seconds: float | None) -> float:
        """`seconds` clamped to the bounds; None (not measured yet) is twice `low`."""
        if seconds is None:
            return min(self.high, 2 * self.low)
        return min(max(seconds, self.low), self.high)

    def jittered(self, base: float, draw: Draw = random.uniform) -> float:
        """A draw from ``base * (1 +- jitter)``, the window cut to the bounds (uniform in what
        is left, so values do not pile up at a bound)."""
        low = max(self.low, base * (1 - self.jitter))
        high = min(self.high, base * (1 + self.jitter))
        return draw(low, high) if low < high else min(max(base, self.low), self.high)


class DrainRate:
    """An exponentially weighted moving average of a growing counter's rate (per second).

    Each sample weighs by the time it covers: a sample `halflife` seconds long moves the
    average half way. A counter that went backwards (a stream deleted and made again) starts a
    new baseline and keeps the average.
    """

    __slots__ = ("_last", "halflife", "rate", "wait_for_motion")

    def __init__(self, halflife: float, *, wait_for_motion: bool = False) -> None:
        self.halflife = halflife
        #: Stay unmeasured until the counter first moves: a counter that only starts when
        #: something happens (callers' rounds) read as 0 a second until then, and an average
        #: starting at 0 takes half-lives to catch up with the real pace.
        self.wait_for_motion = wait_for_motion
        #: Tasks a second; None until two samples were seen.
        self.rate: float | None = None
        self._last: tuple[float, float] | None = None

    def update(self, total: float, now: float) -> None:
        """Take the counter's value `total` at time `now` (monotonic seconds)."""
        last = self._last
        if last is not None and now <= last[1]:
            return  # no time has passed: keep the older baseline
        self._last = (total, now)
        if self.wait_for_motion and self.rate is None and last is not None and total == last[0]:
            return  # not moving yet: this sample is the new baseline
        if last is None or total < last[0]:
            return
        elapsed = now - last[1]
        sample = (total - last[0]) / elapsed
        if self.rate is None:
            self.rate = sample
        else:
            weight = 1 - 0.5 ** (elapsed / self.halflife)
            self.rate += weight * (sample - self.rate)


class Pacer:
    """Each lane's drain rate and the waits it advises, for a backlog `limit` per lane split
    over `shards` shard streams (refusals count per shard, samples per lane)."""

    def __init__(
        self,
        bounds: Bounds,
        *,
        limit: int,
        shards: int = 1,
        slow_down_at: float = 0.8,
        halflife: float = 5.0,
    ) -> None:
        self.bounds = bounds
        self.shards = shards
        self.halflife = halflife
        #: The backlog of a lane above which its 202s advise a wait, and which a refused
        #: client's wait lets the lane drain back to (per lane, and per shard stream).
        self.threshold = slow_down_at * limit
        self.slow_down_share = slow_down_at
        self.shard_threshold = self.threshold / shards
        #: lane -> the wait (seconds, unjittered) its 202s advise, for the lanes above the
        #: threshold only. Updated in place, so a holder of it sees every sample's.
        self.slow: dict[str, float] = {}
        self.rates: dict[str, DrainRate] = {}
        #: lane -> how fast its callers' rounds pass (per shard), when callers are tracked.
        self.round_rates: dict[str, DrainRate] = {}

    def observe(self, figures: Mapping[str, tuple[int, int]], now: float) -> None:
        """One sample: lane -> (backlog, tasks drained so far), at `now` (monotonic seconds).
        A lane left out (its figures were unreadable) keeps its advice."""
        slow = {lane: wait for lane, wait in self.slow.items() if lane not in figures}
        for lane, (backlog, drained) in figures.items():
            rate = self.rates.get(lane)
            if rate is None:
                rate = self.rates[lane] = DrainRate(self.halflife)
            rate.update(drained, now)
            if backlog > self.threshold:
                slow[lane] = self.bounds.base(drain_seconds(backlog - self.threshold, rate.rate))
        self.slow.clear()
        self.slow.update(slow)

    def observe_rounds(self, rounds: Mapping[str, int], now: float) -> None:
        """One sample of lane -> the sum of its shards' current rounds (held callers' turns:
        docs/architecture.md#callers), at `now`."""
        for lane, total in rounds.items():
            rate = self.round_rates.get(lane)
            if rate is None:
                rate = self.round_rates[lane] = DrainRate(self.halflife, wait_for_motion=True)
            rate.update(total / self.shards, now)

    def caller_retry_after(self, lane: str, waiting: int, quota: int) -> float:
        """The wait for a task refused because its caller holds `waiting` tasks of a shard lane
        at its `quota`: a caller's held tasks start one a round, so until the rounds bring it
        back below the slow-down share of its quota, jittered. Until rounds are measured
        moving, the lane's drain rate stands in: rounds pass at most that fast, so the wait
        errs short, and the next refusal has the better figure."""
        excess = waiting - quota * self.slow_down_share
        rounds = self.round_rates.get(lane)
        rate = rounds.rate if rounds is not None and rounds.rate else self.rate(lane)
        seconds = drain_seconds(excess, rate)
        return self.bounds.jittered(self.bounds.base(seconds))

    def rate(self, lane: str) -> float | None:
        """The lane's drain rate (tasks a second), None if not measured yet."""
        rate = self.rates.get(lane)
        return None if rate is None else rate.rate

    def retry_after(self, lane: str, shard_backlog: int) -> float:
        """The wait for a task the lane refused when its shard stream held `shard_backlog`:
        until the lane drains back to the threshold, jittered."""
        excess = (shard_backlog - self.shard_threshold) * self.shards
        return self.bounds.jittered(self.bounds.base(drain_seconds(excess, self.rate(lane))))

    def advice(self, lane: str) -> str | None:
        """The advisory ``Retry-After`` of a 202 for this lane, jittered; None below the
        threshold."""
        wait = self.slow.get(lane)
        return None if wait is None else header_seconds(self.bounds.jittered(wait))
