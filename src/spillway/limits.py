"""The limits a task type may declare: how many run at once, and how often one may start.

Both hold across every worker process and machine: they are kept in Redis
(`spillway.broker.limits`), under keys hash-tagged with the type they guard.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["RateLimit", "TypeLimits"]

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour)\s*")
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_UNITS |= {"h": 3600, "hour": 3600}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `count` starts per `period` seconds, spread evenly (GCRA): one start every
    ``period / count`` seconds, with a burst of at most `burst` starts after a quiet spell."""

    count: int
    period: float
    burst: int = 1

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``"200/s"``, ``"30/m"``, ``"1000/h"``, or ``"5/10s"`` (5 per 10 seconds)."""
        if not isinstance(text, str):
            raise TypeError(f"rate_limit must be a string such as '200/s', not {text!r}")
        match = _RATE.fullmatch(text)
        if match is None:
            raise ValueError(f"rate_limit {text!r}: write COUNT/UNIT, such as '200/s' or '30/m'")
        count, multiple, unit = int(match[1]), int(match[2] or 1), match[3]
        if count < 1 or multiple < 1:
            raise ValueError(f"rate_limit {text!r}: the count and the period must be positive")
        return cls(count, multiple * _UNITS[unit])

    @property
    def interval_ms(self) -> float:
        """Milliseconds between two starts."""
        return self.period * 1000 / self.count

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


@dataclass(frozen=True, slots=True)
class TypeLimits:
    """A task type's limits; a type without any has no `TypeLimits`."""

    concurrency: int | None = None
    rate: RateLimit | None = None

    @classmethod
    def build(cls, concurrency: int | None, rate_limit: str | None) -> TypeLimits | None:
        """Validated at decoration time, so a bad value fails at import, not in a worker."""
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ValueError(f"concurrency must be a positive integer, not {concurrency!r}")
        rate = RateLimit.parse(rate_limit) if rate_limit is not None else None
        if concurrency is None and rate is None:
            return None
        if rate is not None and not math.isfinite(rate.interval_ms):
            raise ValueError(f"rate_limit {rate_limit!r} is out of range")
        return cls(concurrency, rate)
