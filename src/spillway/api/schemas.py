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

from spillway.records import TaskRecord, TaskStatus
from spillway.tasks import TaskDef

__all__ = [
    "MAX_DELAY_S",
    "MAX_TIMEOUT_S",
    "BatchItem",
    "BatchItemResult",
    "BatchResult",
    "BatchSubmission",
    "DeadLetters",
    "Health",
    "ProblemDoc",
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
    status: TaskStatus
    attempts: int
    max_retries: int
    result: Any = None
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    due_at: datetime | None = None
    links: TaskLinks


class DeadLetters(BaseModel):
    """Dead-lettered tasks, newest first."""

    dead_letters: list[dict[str, Any]]


class Health(BaseModel):
    status: str


def resource(record: TaskRecord, root_path: str = "") -> dict[str, Any]:
    """The status resource of a task (payload and traceback stay server-side)."""
    return {
        "id": record.id,
        "type": record.type,
        "queue": record.queue,
        "status": record.status.value,
        "attempts": record.attempts,
        "max_retries": record.max_retries,
        "result": record.result,
        "error": record.error,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "due_at": record.due_at,
        "links": {"self": f"{root_path}/tasks/{record.id}"},
    }


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
