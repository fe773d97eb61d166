"""Retry spacing: exponential backoff with full jitter (AWS Architecture Blog's recommendation)."""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]

_rng = random.SystemRandom()


def backoff_delay(attempt: int, base: float, cap: float, *, jitter: bool = True) -> float:
    """Seconds to wait before the retry that follows failed attempt number `attempt` (1-based).

    The ceiling doubles with each attempt up to `cap`; full jitter picks uniformly below it, so
    retries of tasks that failed together (a dependency outage) spread out instead of bunching.
    """
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    return _rng.uniform(0, ceiling) if jitter else ceiling
