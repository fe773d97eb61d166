"""The request and response bodies of the HTTP API, and the OpenAPI document built from them.

The submission envelope is validated by `TaskSubmission`; what the OpenAPI document shows
for ``POST /tasks`` is sharper: one schema per registered task type, keyed by ``type``, each
with that type's own payload schema.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from spillway.expiry import MAX_EXPIRES_S
from spillway.records import Callback, TaskStatus, resource
from spillway.tasks import TaskDef

__all__ = [
    "MAX_DELAY_S",
    "MAX_TIMEOUT_S",
    "BatchItem",
    "BatchItemResult",
    "BatchResult",
    "BatchSubmission",
    "CancelRequest",
    "CancelResult",
    "DeadLetters",
    "Health",
    "ProblemDoc",
    "QueueState",
    "TaskAccepted",
    "TaskResource",
    "TaskSubmission",
    "resource",
    "submission_schemas",
]

MAX_DELAY_S = 366 * 86_400.0
MAX_TIMEOUT_S = 7 * 86_400.0
IDEMPOTENCY_KEY = r"^[\x20-\x7e]{1,255}$"


class TaskSubmission(BaseModel):
    """The body of ``POST /tasks``."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="A registered task type.", min_length=1, max_length=200)
    payload: Any = Field(default=None, description="The task's input, valid for its type.")
    delay_s: float | None = Field(
        default=None, ge=0, le=MAX_DELAY_S, description="Run no earlier than this many seconds."
    )
    max_retries: int | None = Field(
        default=None, ge=0, le=100, description="Retries after the first attempt."
    )
    timeout_s: float | None = Field(
        default=None, gt=0, le=MAX_TIMEOUT_S, description="Seconds one attempt may run."
    )
    priority: Literal["high", "default", "low"] | None = Field(
        default=None,
        description="Higher levels start first; lower ones keep a share (default: the type's).",
    )
    expires_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_EXPIRES_S,
        description="Not started this many seconds after it is accepted, the task ends "
        "`expired` and never runs (replaces the type's default; must exceed `delay_s`).",
    )
    callback_url: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="Once the task ends, its resource is POSTed here, signed "
        "(`Spillway-Signature`), retried with backoff until a 2xx (replaces the type's "
        "default). http or https; private, loopback and link-local addresses are refused "
        "unless SPILLWAY_CALLBACK_ALLOW_NETWORKS holds them.",
    )


class BatchItem(TaskSubmission):
    """One task of ``POST /tasks/batch``; its idempotency key works as the header does."""

    idempotency_key: str | None = Field(default=None, pattern=IDEMPOTENCY_KEY)


class BatchSubmission(BaseModel):
    """The body of ``POST /tasks/batch``."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[BatchItem] = Field(min_length=1)


class TaskAccepted(BaseModel):
    """The task is durably queued; its status resource is at ``Location``."""

    task_id: str
    status: Literal["queued"] = "queued"


class ProblemDoc(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:spillway:problem:payload-invalid"])
    title: str
    status: int
    detail: str


class BatchItemResult(BaseModel):
    """The outcome of one task of a batch: its id, or the problem that refused it."""

    task_id: str | None
    status: Literal["queued", "rejected"]
    duplicate: bool = False
    error: ProblemDoc | None = None


class BatchResult(BaseModel):
    """Per-task outcomes, in the order of the request."""

    results: list[BatchItemResult]
    accepted: int
    rejected: int


class TaskLinks(BaseModel):
    self: str


class TaskResource(BaseModel):
    """The status of one task, and its outcome once it has one."""

    id: str
    type: str
    queue: str
    priority: Literal["high", "default", "low"]
    status: TaskStatus
    attempts: int
    max_retries: int
    result: Any = None
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    due_at: datetime | None = None
    expires_at: datetime | None = None
    cancel_requested_at: datetime | None = Field(
        default=None,
        description="When a cancel reached the task while it ran: it is being stopped and "
        "ends `cancelled`.",
    )
    callback: Callback | None = Field(
        default=None,
        description="Its completion webhook, if it has one: `pending` until a delivery got a "
        "2xx (`delivered`) or the retries ran out (`failed`).",
    )
    links: TaskLinks


class DeadLetters(BaseModel):
    """Dead-lettered tasks, newest first."""

    dead_letters: list[dict[str, Any]]


class Health(BaseModel):
    status: str


class QueueState(BaseModel):
    """Whether workers start a queue's tasks; `changed` is false when it already was so."""

    queue: str
    paused: bool
    changed: bool


class CancelRequest(BaseModel):
    """The body of ``POST /tasks/cancel``: a filter (every criterion given must hold; at least
    one is required) and one page of the sweep."""

    model_config = ConfigDict(extra="forbid")

    queue: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    type: str | None = Field(default=None, min_length=1, max_length=200)
    priority: Literal["high", "default", "low"] | None = None
    older_than_s: float | None = Field(
        default=None, ge=0, le=10**9, description="Only tasks accepted this long ago or more."
    )
    dry_run: bool = Field(default=False, description="Count the matching tasks; cancel none.")
    cursor: str | None = Field(
        default=None,
        max_length=400,
        description="The `cursor` of the previous page; absent for the first.",
    )
    limit: int = Field(default=500, ge=1, le=1000, description="At most this many entries read.")


class CancelResult(BaseModel):
    """One page of a bulk cancel. While `more` is true, send the same filter with `cursor`."""

    examined: int
    matched: int
    cancelled: int
    dry_run: bool
    more: bool
    cursor: str | None


def submission_schemas(tasks: dict[str, TaskDef]) -> tuple[Any, Any, dict[str, Any]]:
    """JSON Schemas of a submission and of a batch item, one variant per task type.

    Returns (submission schema, batch item schema, component schemas they refer to).
    """
    if not tasks:
        single: Any = TaskSubmission
        item: Any = BatchItem
    else:
        singles = [_variant(t, TaskSubmission, "Submission") for t in tasks.values()]
        items = [_variant(t, BatchItem, "BatchItem") for t in tasks.values()]
        single = _union(singles)
        item = _union(items)
    schemas: list[Any] = []
    defs: dict[str, Any] = {}
    for tp in (single, item):
        doc = TypeAdapter(tp).json_schema(ref_template="#/components/schemas/{model}")
        defs.update(doc.pop("$defs", {}))
        schemas.append(doc)
    return schemas[0], schemas[1], defs


def _variant(task: TaskDef, base: type[TaskSubmission], suffix: str) -> type[BaseModel]:
    payload_type = task.payload_type
    try:
        TypeAdapter(payload_type).json_schema()
    except Exception:
        payload_type = Any  # not describable in JSON Schema; the validator still applies
    model: type[BaseModel] = create_model(
        _component_name(task.name) + suffix,
        __base__=base,
        __doc__=f"A `{task.name}` task (queue `{task.queue}`).",
        type=(Literal[task.name], Field(description="The task type.")),  # type: ignore[arg-type]
        payload=(payload_type, Field(description=f"The payload of `{task.name}`.")),
    )
    return model


def _union(models: list[type[BaseModel]]) -> Any:
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007


def _component_name(task_name: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", task_name)
    return "".join(w[:1].upper() + w[1:] for w in words if w) or "Task"
