"""A task's retry policy: how it is stored, and the backoff between attempts.

The policy travels with each task in one record field, ``'max_retries|timeout|base|cap'``;
`RetryPolicy.text` and `RetryPolicy.decode` are the only Python that writes or reads that
text. Of the Lua scripts only ``begin.lua`` reads it (the attempt limit, its first part);
the others copy it whole.

Which failures are retried at all (a task's ``retry_on`` and ``no_retry_for``) is decided
by the worker from the task's declaration, not stored: exception classes do not travel
through Redis, and every worker imports the handler anyway. `exception_classes` checks
those options when a task is declared; `not_retried` applies them to a failure.
"""

from __future__ import annotations

import functools
import random

__all__ = [
    "ExceptionClasses",
    "ExceptionTypes",
    "RetryPolicy",
    "backoff_delay",
    "exception_classes",
    "not_retried",
]

ExceptionClasses = tuple[type[BaseException], ...]
# What `retry_on` and `no_retry_for` accept, as `except` and `isinstance` do, plus a list.
ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...] | list[type[BaseException]]

_rng = random.SystemRandom()
# The longest timeout or backoff a stored policy may hold (about 31 years): past it, due times
# leave datetime's range. NaN fails the comparison too.
_MAX_SECONDS = 1e9


class RetryPolicy:
    """At most ``1 + max_retries`` runs of ``timeout`` seconds each, spaced by `backoff_delay`.

    Immutable by convention; `text` is the record field's text, built once per policy because
    every accepted task sends it.
    """

    __slots__ = ("base", "cap", "max_retries", "text", "timeout")

    def __init__(self, max_retries: int, timeout: float, base: float, cap: float) -> None:
        # As numbers of one type, so equal policies have one text (30 and 30.0 alike).
        self.max_retries = int(max_retries)
        self.timeout = float(timeout)
        self.base = float(base)
        self.cap = float(cap)
        self.text = f"{self.max_retries}|{self.timeout}|{self.base}|{self.cap}"

    def replace(self, *, max_retries: int | None, timeout: float | None) -> RetryPolicy:
        """This policy, or a copy with a task's own attempt limit or run timeout."""
        if max_retries is None and timeout is None:
            return self
        return RetryPolicy(
            self.max_retries if max_retries is None else max_retries,
            self.timeout if timeout is None else timeout,
            self.base,
            self.cap,
        )

    @classmethod
    def decode(cls, text: str) -> RetryPolicy:
        """The policy of a record field (`ValueError` if it is not one `text` could write).

        Records live in Redis, where anyone may have written them: a policy whose numbers are
        negative, not finite or past `_MAX_SECONDS` is refused here. Decoded once per text
        (a worker begins thousands of tasks a second, nearly all of a few policies); the
        cache is bounded, so texts written to make it grow only push each other out.
        """
        return _decode(text)

    @classmethod
    def _parse(cls, text: str) -> RetryPolicy:
        max_retries, timeout, base, cap = text.split("|")
        policy = cls(int(max_retries), float(timeout), float(base), float(cap))
        numbers = (policy.timeout, policy.base, policy.cap)
        if policy.max_retries < 0 or not all(0 <= n <= _MAX_SECONDS for n in numbers):
            raise ValueError(f"not a retry policy: {text[:80]!r}")
        return policy

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryPolicy) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"RetryPolicy({self.text!r})"


@functools.lru_cache(maxsize=256)
def _decode(text: str) -> RetryPolicy:
    return RetryPolicy._parse(text)


def backoff_delay(attempt: int, base: float, cap: float, *, jitter: bool = True) -> float:
    """Seconds to wait before the retry that follows failed attempt number `attempt` (1-based).

    The ceiling doubles with each attempt up to `cap`; full jitter picks uniformly below it, so
    retries of tasks that failed together (a dependency outage) spread out instead of bunching.
    """
    # The exponent is bounded: 2.0 ** 1024 overflows, and a long retry budget may get there.
    ceiling = min(cap, base * 2.0 ** min(max(0, attempt - 1), 64))
    return _rng.uniform(0, ceiling) if jitter else ceiling


def exception_classes(option: str, value: object) -> ExceptionClasses:
    """`value` (one exception class, or a tuple or list of them) as a tuple.

    A `TypeError` names `option` and the bad value, so a mistake surfaces when the task is
    declared, not at its first failure in a worker.
    """
    items = (value,) if isinstance(value, type) else value
    # A string is a sequence too: retry_on="ValueError" must not become ("V", "a", ...).
    if not isinstance(items, tuple | list):
        raise TypeError(f"{option}={value!r}: expected a tuple or list of exception classes")
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"{option}: {item!r} is not an exception class (a BaseException)")
    return tuple(items)


def not_retried(
    exc: BaseException, retry_on: ExceptionClasses, no_retry_for: ExceptionClasses
) -> str | None:
    """Why a failure goes to the dead letters at once, or None if it may be retried.

    ``no_retry_for`` is checked first, so it wins over a broader ``retry_on``.
    """
    if isinstance(exc, no_retry_for):
        return "no_retry_for"
    if not isinstance(exc, retry_on):
        return "not in retry_on"
    return None
