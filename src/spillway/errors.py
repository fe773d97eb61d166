"""Every error Spillway raises derives from :class:`SpillwayError`.

    SpillwayError
    ├── ConfigurationError          settings or Redis configuration that cannot work
    │   └── EvictionPolicyError     Redis could evict Spillway's keys
    ├── EmbeddedRedisError          the embedded redis-server could not be found or started
    ├── UnknownTaskType             no handler is registered under that name
    ├── PayloadInvalid              the payload does not validate for the task type
    ├── IdempotencyConflict         an idempotency key reused with a different request
    ├── BacklogFull                 the queue holds as many tasks as it may; retry later
    ├── BrokerUnavailable           Redis is unreachable, refusing or too slow
    ├── TaskNotFound                no task has that id (or its record has expired)
    ├── RecordUnreadable            the task's record in Redis is malformed (not written by us)
    ├── TaskNotCancellable          the task is running or already terminal
    ├── UnknownQueue                no queue has that name (pause, resume, bulk cancel)
    ├── FilterInvalid               a bulk cancel's filter or cursor cannot be used
    ├── ResultTimeout               the task did not reach a terminal state in time
    ├── TaskFailed                  the awaited task ended dead, cancelled or expired
    ├── Retry                       raised by a handler: run again after `after` seconds
    └── Fail                        raised by a handler: dead-letter now, no more attempts

The HTTP layer maps each one to a problem+json response in one place (`Retry` and `Fail` are
a handler's signals to the worker, never raised by Spillway, so they have no status).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BacklogFull",
    "BrokerUnavailable",
    "CallerQuotaFull",
    "ConfigurationError",
    "EmbeddedRedisError",
    "EvictionPolicyError",
    "Fail",
    "FilterInvalid",
    "IdempotencyConflict",
    "PayloadInvalid",
    "RecordUnreadable",
    "ResultTimeout",
    "Retry",
    "SpillwayError",
    "TaskFailed",
    "TaskNotCancellable",
    "TaskNotFound",
    "UnknownQueue",
    "UnknownTaskType",
]


class SpillwayError(Exception):
    """Base of every Spillway error."""


class ConfigurationError(SpillwayError):
    """Settings, or the Redis server's configuration, cannot work."""


class EvictionPolicyError(ConfigurationError):
    """Redis may evict keys (``maxmemory-policy`` is not ``noeviction``)."""

    def __init__(self, policy: str) -> None:
        super().__init__(
            f"Redis maxmemory-policy is {policy!r}: it may evict queued tasks and results. "
            "Set `maxmemory-policy noeviction` on the server Spillway uses."
        )
        self.policy = policy


class EmbeddedRedisError(SpillwayError):
    """The embedded redis-server could not be found or started."""


class UnknownTaskType(SpillwayError):
    """No task is registered under this name."""

    def __init__(self, task_type: str, known: list[str]) -> None:
        shown = task_type if len(task_type) <= 80 else task_type[:77] + "..."
        #: The message without the registered types (what a client key is told).
        self.brief = f"unknown task type {shown!r}"
        super().__init__(f"{self.brief}; registered types: {', '.join(known)}")
        self.task_type = task_type
        self.known = known


class PayloadInvalid(SpillwayError):
    """The payload does not validate against the task type's payload model."""

    def __init__(self, task_type: str, errors: list[dict[str, Any]]) -> None:
        first = errors[0] if errors else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        super().__init__(f"invalid payload for {task_type!r}: {where}: {first.get('msg')}")
        self.task_type = task_type
        self.errors = errors


class IdempotencyConflict(SpillwayError):
    """The idempotency key was already used for a different request."""

    def __init__(self, key: str, task_id: str) -> None:
        super().__init__("idempotency key was already used with a different request")
        self.key = key
        self.task_id = task_id


class BacklogFull(SpillwayError):
    """The queue's backlog is at its limit; nothing was enqueued."""

    def __init__(self, queue: str, limit: int, retry_after: float) -> None:
        super().__init__(f"queue {queue!r} backlog is at its limit of {limit} tasks")
        self.queue = queue
        self.limit = limit
        self.retry_after = retry_after


class CallerQuotaFull(BacklogFull):
    """The caller holds its quota of the queue's waiting tasks (SPILLWAY_CALLER_QUOTA); other
    callers may still enqueue. Nothing was enqueued."""

    def __init__(self, queue: str, limit: int, retry_after: float) -> None:
        SpillwayError.__init__(
            self, f"this caller's waiting tasks in queue {queue!r} are at its quota of {limit}"
        )
        self.queue = queue
        self.limit = limit
        self.retry_after = retry_after


class BrokerUnavailable(SpillwayError):
    """Redis is unreachable, refusing commands or did not answer in time."""

    def __init__(self, detail: str, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class OutcomeUnknown(BrokerUnavailable):
    """Redis's connection broke after the task was sent and before Redis answered.

    Redis may have written the task (it can run a script and die before its reply leaves), so
    this refusal is not proof that nothing was enqueued: `task_id` names the task it would be.
    Any other `BrokerUnavailable` from an enqueue is: nothing was written.
    """

    def __init__(self, detail: str, retry_after: float = 1.0, task_id: str | None = None) -> None:
        super().__init__(detail, retry_after)
        self.task_id = task_id

    def naming(self, task_id: str) -> OutcomeUnknown:
        """The same error for one task of the batch it hit."""
        return OutcomeUnknown(str(self), self.retry_after, task_id)


class TaskNotFound(SpillwayError):
    """No task has this id, or its record has expired."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r}")
        self.task_id = task_id


class RecordUnreadable(SpillwayError):
    """The task's record in Redis has a missing or malformed field: Spillway did not write it.

    `reason` names the field and what is wrong with it, never its value.
    """

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(f"the record of task {task_id!r} cannot be read: {reason}")
        self.task_id = task_id
        self.reason = reason


class TaskNotCancellable(SpillwayError):
    """Only a task that is waiting (queued or waiting for a retry) can be cancelled."""

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(f"task {task_id!r} is {status} and can no longer be cancelled")
        self.task_id = task_id
        self.status = status


class UnknownQueue(SpillwayError):
    """No registered task and no task ever written uses a queue of this name."""

    def __init__(self, queue: str, known: list[str]) -> None:
        shown = queue if len(queue) <= 80 else queue[:77] + "..."
        super().__init__(f"no queue named {shown!r}; known queues: {', '.join(known)}")
        self.queue = queue
        self.known = known


class FilterInvalid(SpillwayError):
    """A bulk cancel's filter selects nothing by design (no criterion) or its cursor is not
    one the sweep handed out."""


class ResultTimeout(SpillwayError):
    """The task did not reach a terminal state within the timeout."""

    def __init__(self, task_id: str, timeout: float) -> None:
        super().__init__(f"task {task_id!r} was not finished after {timeout:g} s")
        self.task_id = task_id
        self.timeout = timeout


class TaskFailed(SpillwayError):
    """The awaited task ended without a result (dead-lettered, cancelled or expired)."""

    def __init__(self, task_id: str, status: str, error: str | None) -> None:
        super().__init__(f"task {task_id!r} ended {status}: {error or 'no error recorded'}")
        self.task_id = task_id
        self.status = status
        self.error = error


# The longest delay a retry may ask for (about 31 years, as `spillway.retry` allows a stored
# policy): past it, the due time leaves datetime's range and the record could not be read.
_MAX_AFTER = 1e9


class Retry(SpillwayError):
    """Raised by a handler: run the task again after `after` seconds (a partner's Retry-After).

    It is an attempt like any failure: with no retries left the task is dead-lettered.
    ``after=None`` waits the task's backoff. It is retried whatever ``retry_on`` and
    ``no_retry_for`` say: the handler asked for it.
    """

    def __init__(self, after: float | None = None, *, reason: str = "") -> None:
        if after is not None:
            # bool is an int: `Retry(True)` is a mistake, not one second.
            if isinstance(after, bool) or not isinstance(after, int | float):
                raise TypeError(f"Retry(after={after!r}): after is a number of seconds or None")
            if not 0 <= after <= _MAX_AFTER:  # NaN fails it too
                raise ValueError(
                    f"Retry(after={after!r}): after is a finite number of seconds >= 0"
                )
        when = "after the backoff" if after is None else f"after {after:g} s"
        super().__init__(f"{reason} (retry {when})" if reason else f"retry {when}")
        self.after = None if after is None else float(after)
        self.reason = reason


class Fail(SpillwayError):
    """Raised by a handler: dead-letter the task now with `reason`, leaving its retries unused.

    It goes to the dead letters whatever ``retry_on`` and ``no_retry_for`` say.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
