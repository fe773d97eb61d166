"""Task expiry: a task not started within ``expires`` seconds of its acceptance ends ``expired``.

The deadline is absolute, counted from the accept (the record's ``created_at``), as Celery's
and BullMQ's are: a delay does not move it, so a task delayed past its own expiry is refused at
enqueue. ``accept.lua`` stores it as ``expires_at`` (server clock, ms) only for a task that has
one, and ``begin.lua`` ends a delivery past it unrun. A run that started once (a retry waiting
for its backoff, a redelivery after a worker died mid-run) is never expired: expiry is about
work nobody began, not about work in progress.
"""

from __future__ import annotations

import math
from datetime import timedelta

__all__ = ["MAX_EXPIRES_S", "expiry_seconds"]

# As long as the longest delay: a longer expiry would never decide anything.
MAX_EXPIRES_S = 366 * 86_400.0


def expiry_seconds(value: float | timedelta | None) -> float | None:
    """`value` in seconds (None: no expiry).

    `ValueError` unless it is a number of seconds above 0 and at most `MAX_EXPIRES_S`: a
    task that expires as it is accepted could never run, and NaN would never expire.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expires={value!r}: a number of seconds or a timedelta")
    else:
        seconds = float(value)
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_EXPIRES_S):
        raise ValueError(f"expires={value!r}: more than 0 and at most {MAX_EXPIRES_S:g} seconds")
    return seconds
