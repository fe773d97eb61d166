"""What Spillway stores and reports: task status records, dead letters, workers and stats."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from spillway.lanes import parse_lane
from spillway.retry import RetryPolicy

__all__ = [
    "TERMINAL",
    "Callback",
    "CallbackStats",
    "DeadTask",
    "EnqueueResult",
    "QueueEvent",
    "QueueStats",
    "ScheduleStats",
    "Stats",
    "TaskRecord",
    "TaskStatus",
    "Unreadable",
    "WorkerInfo",
    "count",
    "from_ms",
    "resource",
]


class TaskStatus(StrEnum):
    """Where a task is in its life. `queued`, `running` and `failed` (a retry is pending) are
    on the way; the others are final. `expired`: not started by its expiry, so never run."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.DEAD, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)


def from_ms(value: str | bytes | None) -> datetime | None:
    """An aware UTC datetime from a Redis-side millisecond timestamp.

    `ValueError` if it is not a whole number of milliseconds in datetime's range.
    """
    if value is None or value in (b"", ""):
        return None
    try:
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"timestamp out of range: {exc}") from exc


def _json(value: str | None) -> Any:
    # Empty: a field the scripts copied from a record that lacked it (no JSON text is empty).
    return orjson.loads(value) if value else None


class Unreadable(ValueError):
    """A stored record or entry whose field `name` is missing or malformed (never its value)."""

    def __init__(self, name: str, what: str) -> None:
        super().__init__(f"field {name!r} {what}")
        self.name = name


class _Fields:
    """Reads a Redis hash or stream entry field by field, naming the field that is wrong."""

    def __init__(self, raw: dict[str, str]) -> None:
        self.raw = raw

    def text(self, name: str, default: str | None = None) -> str:
        value = self.raw.get(name, default)
        if value is None:
            raise Unreadable(name, "is missing")
        return value

    def parse(self, name: str, read: Any, default: str | None = None) -> Any:
        value = self.raw.get(name, default)
        try:
            return read(value)  # an optional field's reader takes None
        except (ValueError, TypeError, AttributeError) as exc:
            what = "is missing" if value is None else f"is malformed ({type(exc).__name__})"
            raise Unreadable(name, what) from None


class Callback(BaseModel):
    """A task's completion webhook and how its delivery went (spillway.deliverer)."""

    model_config = ConfigDict(frozen=True)

    url: str
    #: pending (the task runs, or its delivery is being tried), delivered, or failed (retried
    #: for SPILLWAY_CALLBACK_RETRY_FOR without an answer in 2xx).
    status: Literal["pending", "delivered", "failed"] = "pending"
    attempts: int = 0
    last_error: str | None = None
    last_attempt_at: datetime | None = None

    @classmethod
    def from_fields(cls, f: _Fields) -> Callback | None:
        url = f.raw.get("callback")
        if not url:
            return None
        return cls(
            url=url,
            status=f.parse("callback_status", _callback_status, "pending"),
            attempts=f.parse("callback_attempts", count, "0"),
            last_error=f.raw.get("callback_error") or None,
            last_attempt_at=f.parse("callback_at", from_ms),
        )


def _callback_status(value: str) -> str:
    if value not in ("pending", "delivered", "failed"):
        raise ValueError(value)
    return value


class TaskRecord(BaseModel):
    """The status record of one task, as stored in Redis."""

    model_config = ConfigDict(frozen=True)

    id: str
    type: str
    queue: str
    status: TaskStatus
    attempts: int
    max_retries: int
    payload: Any = None
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    due_at: datetime | None = None
    expires_at: datetime | None = None  # not started by then: expired (None: never)
    #: When a cancel reached it while it ran (it ends `cancelled` once its run stops).
    cancel_requested_at: datetime | None = None
    callback: Callback | None = None

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> TaskRecord:
        """Build a record from the task's Redis hash (decoded strings).

        `Unreadable` names the first field that is missing or malformed.
        """
        f = _Fields(h)
        return cls(
            id=f.text("id"),
            type=f.text("type"),
            queue=f.text("queue"),
            status=f.parse("status", TaskStatus),
            attempts=f.parse("attempts", count, "0"),
            max_retries=f.parse("policy", RetryPolicy.decode).max_retries,
            payload=f.parse("payload", _json),
            result=f.parse("result", _json),
            error=h.get("error") or None,
            traceback=h.get("traceback") or None,
            created_at=f.parse("created_at", from_ms),
            started_at=f.parse("started_at", from_ms),
            finished_at=f.parse("finished_at", from_ms),
            due_at=f.parse("due_at", from_ms),
            expires_at=f.parse("expires_at", from_ms),
            cancel_requested_at=f.parse("cancel_requested_at", from_ms),
            callback=Callback.from_fields(f),
        )


class DeadTask(BaseModel):
    """One entry of a dead-letter stream: the task, its last error and traceback summary."""

    model_config = ConfigDict(frozen=True)

    id: str
    dead_letter_id: str
    type: str
    queue: str
    payload: Any
    error: str
    traceback: str
    attempts: int
    created_at: datetime | None
    failed_at: datetime | None

    @classmethod
    def from_entry(cls, entry_id: str, raw: dict[str, str]) -> DeadTask:
        """Build one from a dead-letter entry; `Unreadable` names the first malformed field.

        Fields a malformed-entry letter leaves out (created_at, the policy) are optional.
        """
        f = _Fields(raw)
        return cls(
            id=raw.get("id", ""),
            dead_letter_id=entry_id,
            type=raw.get("type", ""),
            queue=raw.get("queue", ""),
            payload=f.parse("payload", _json),
            error=raw.get("error", ""),
            traceback=raw.get("traceback", ""),
            attempts=f.parse("attempts", count, "0"),
            created_at=f.parse("created_at", from_ms),
            failed_at=f.parse("failed_at", from_ms),
        )


def count(value: str) -> int:
    """A stored count: a whole number from 0 up to Redis's own integer limit (`ValueError`
    otherwise), so that whatever is read back can be answered as JSON."""
    n = int(value)
    if not 0 <= n < 2**63:
        raise ValueError("not a count")
    return n


class WorkerInfo(BaseModel):
    """A live worker process, from its heartbeat."""

    model_config = ConfigDict(frozen=True)

    name: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    in_flight: int
    processed: int
    started_at: datetime | None
    last_seen: datetime | None

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> WorkerInfo:
        """Build one from a heartbeat hash; `Unreadable` names the first malformed field."""
        f = _Fields(h)
        return cls(
            name=f.text("name"),
            host=f.text("host"),
            pid=f.parse("pid", count),
            queues=[q for q in f.text("queues").split(",") if q],
            concurrency=f.parse("concurrency", count),
            in_flight=f.parse("in_flight", count),
            processed=f.parse("processed", count),
            started_at=f.parse("started_at", from_ms),
            last_seen=f.parse("last_seen", from_ms),
        )


class QueueStats(BaseModel):
    """Figures of one queue, summed over its shards."""

    model_config = ConfigDict(frozen=True)

    queue: str
    backlog: int  # entries in the streams: waiting plus delivered-but-unfinished
    pending: int  # delivered to a worker and not yet acknowledged
    delayed: int  # waiting in the due set (delay or retry backoff)
    dead: int  # entries in the dead-letter streams


class LimitStats(BaseModel):
    """A limited task type's slots now, across every worker, and its tasks waiting for one."""

    model_config = ConfigDict(frozen=True)

    type: str
    concurrency: int | None  # the limit; None: a rate limit only
    rate_limit: str | None  # as "COUNT/PERIODs"
    running: int  # slots held now
    waiting: int  # tasks in the type's lanes not yet delivered to a worker


class CallbackStats(BaseModel):
    """Completion webhooks over every shard: waiting for a delivery, and the tries so far."""

    model_config = ConfigDict(frozen=True)

    due: int = 0  # waiting: due now, or later after a failed try
    delivered: int = 0
    retried: int = 0  # tries that failed with time left to try again
    failed: int = 0  # given up on (retry window over, or the URL refused)


class ScheduleStats(BaseModel):
    """A schedule as the workers that run it recorded it (`spillway.broker.schedules`)."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: str  # the task type it enqueues
    queue: str
    spec: str  # the cron expression, or "every 300s"
    tz: str
    catch_up: str
    last_run: datetime | None  # the newest tick it enqueued a task for
    last_task: str | None  # that task's id
    next_run: datetime | None  # the next tick, as of the last check
    checked_at: datetime  # a worker's last check


class Stats(BaseModel):
    """What `spillway stats` and ``GET /stats`` show."""

    model_config = ConfigDict(frozen=True)

    queues: list[QueueStats]
    workers: list[WorkerInfo]
    counts: dict[str, dict[str, int]]  # task type -> outcome -> count
    limits: list[LimitStats] = []
    paused: list[str] = []  # queues an operator paused: accepting, but none of their tasks start
    schedules: list[ScheduleStats] = []
    callbacks: CallbackStats = CallbackStats()


# Not frozen: the accept path builds one per task (docs/benchmarks.md#accept-request-objects).
@dataclass(slots=True)
class EnqueueResult:
    """The outcome of one item of `enqueue_many`: a task id, or the error that refused it."""

    task_id: str | None
    duplicate: bool = False
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class QueueEvent:
    """A task's new status in a followed queue (`Spillway.queue_events`), or, with `gap`
    true, the notice that changes were missed: the feeds no longer held the position the
    follower came back from (`spillway.feed`). `event_id` resumes the stream after it."""

    event_id: str
    gap: bool = False
    task_id: str = ""
    queue: str = ""
    priority: str = "default"
    task_type: str = ""
    status: TaskStatus | None = None
    attempts: int = 0
    at: datetime | None = None

    def doc(self) -> dict[str, Any]:
        """The event as `GET /queues/{name}/events` sends it."""
        if self.gap:
            return {"gap": True, "detail": "changes were missed: the feed no longer holds "
                    "the position resumed from"}  # fmt: skip
        return {
            "task_id": self.task_id,
            "queue": self.queue,
            "priority": self.priority,
            "type": self.task_type,
            "status": self.status,
            "attempts": self.attempts,
            "at": self.at,
        }


def resource(record: TaskRecord, root_path: str = "") -> dict[str, Any]:
    """The status resource of a task, as `GET /tasks/{id}` answers it and its webhook sends it
    (payload and traceback stay server-side)."""
    lane = parse_lane(record.queue)
    return {
        "id": record.id,
        "type": record.type,
        "queue": lane.queue,
        "priority": lane.priority,
        "status": record.status.value,
        "attempts": record.attempts,
        "max_retries": record.max_retries,
        "result": record.result,
        "error": record.error,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "due_at": record.due_at,
        "expires_at": record.expires_at,
        "cancel_requested_at": record.cancel_requested_at,
        "callback": None if record.callback is None else record.callback.model_dump(),
        "links": {"self": f"{root_path}/tasks/{record.id}"},
    }
