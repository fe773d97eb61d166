"""Spillway: a durable HTTP front door and task queue on Redis Streams."""

from spillway.app import EnqueueItem, Spillway
from spillway.client import AsyncClient, Client
from spillway.errors import (
    BacklogFull,
    BrokerUnavailable,
    CallerQuotaFull,
    ConfigurationError,
    EmbeddedRedisError,
    EvictionPolicyError,
    Fail,
    FilterInvalid,
    IdempotencyConflict,
    OutcomeUnknown,
    PayloadInvalid,
    RecordUnreadable,
    ResultTimeout,
    Retry,
    SpillwayError,
    TaskFailed,
    TaskNotCancellable,
    TaskNotFound,
    UnknownQueue,
    UnknownTaskType,
)
from spillway.records import DeadTask, EnqueueResult, Stats, TaskRecord, TaskStatus, WorkerInfo
from spillway.settings import Settings
from spillway.tasks import TaskContext
from spillway.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "BacklogFull",
    "BrokerUnavailable",
    "CallerQuotaFull",
    "Client",
    "ConfigurationError",
    "DeadTask",
    "EmbeddedRedisError",
    "EnqueueItem",
    "EnqueueResult",
    "EvictionPolicyError",
    "Fail",
    "FilterInvalid",
    "IdempotencyConflict",
    "OutcomeUnknown",
    "PayloadInvalid",
    "RecordUnreadable",
    "ResultTimeout",
    "Retry",
    "Settings",
    "Spillway",
    "SpillwayError",
    "Stats",
    "TaskContext",
    "TaskFailed",
    "TaskNotCancellable",
    "TaskNotFound",
    "TaskRecord",
    "TaskStatus",
    "UnknownQueue",
    "UnknownTaskType",
    "Worker",
    "WorkerInfo",
    "__version__",
]
