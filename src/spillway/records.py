"""What Spillway stores and reports: task status records, dead letters, workers and stats."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from spillway.retry import RetryPolicy

__all__ = [
    "TERMINAL",
    "DeadTask",
    "EnqueueResult",
    "QueueStats",
    "Stats",
    "TaskRecord",
    "TaskStatus",
    "WorkerInfo",
    "from_ms",
]


class TaskStatus(StrEnum):
    """Where a task is in its life. `failed` means a retry is pending; the others are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.DEAD, TaskStatus.CANCELLED})


def from_ms(value: str | bytes | None) -> datetime | None:
    """An aware UTC datetime from a Redis-side millisecond timestamp."""
    if value is None or value in (b"", ""):
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def _json(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


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

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> TaskRecord:
        """Build a record from the task's Redis hash (decoded strings)."""
        return cls(
            id=h["id"],
            type=h["type"],
            queue=h["queue"],
            status=TaskStatus(h["status"]),
            attempts=int(h.get("attempts", 0)),
            max_retries=RetryPolicy.decode(h["policy"]).max_retries,
            payload=_json(h.get("payload")),
            result=_json(h.get("result")),
            error=h.get("error") or None,
            traceback=h.get("traceback") or None,
            created_at=from_ms(h.get("created_at")),
            started_at=from_ms(h.get("started_at")),
            finished_at=from_ms(h.get("finished_at")),
            due_at=from_ms(h.get("due_at")),
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
    def from_entry(cls, entry_id: str, f: dict[str, str]) -> DeadTask:
        return cls(
            id=f.get("id", ""),
            dead_letter_id=entry_id,
            type=f.get("type", ""),
            queue=f.get("queue", ""),
            payload=_json(f.get("payload")),
            error=f.get("error", ""),
            traceback=f.get("traceback", ""),
            attempts=int(f.get("attempts", 0)),
            created_at=from_ms(f.get("created_at")),
            failed_at=from_ms(f.get("failed_at")),
        )


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


class QueueStats(BaseModel):
    """Figures of one queue, summed over its shards."""

    model_config = ConfigDict(frozen=True)

    queue: str
    backlog: int  # entries in the streams: waiting plus delivered-but-unfinished
    pending: int  # delivered to a worker and not yet acknowledged
    delayed: int  # waiting in the due set (delay or retry backoff)
    dead: int  # entries in the dead-letter streams


class Stats(BaseModel):
    """What `spillway stats` and ``GET /stats`` show."""

    model_config = ConfigDict(frozen=True)

    queues: list[QueueStats]
    workers: list[WorkerInfo]
    counts: dict[str, dict[str, int]]  # task type -> outcome -> count


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
