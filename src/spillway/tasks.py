"""Task declarations: the handler, its payload type, and its retry and timeout policy."""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from spillway.codec import dumps
from spillway.errors import PayloadInvalid
from spillway.lanes import PRIORITIES, Priority, lane_name
from spillway.limits import TypeLimits
from spillway.retry import ExceptionClasses, RetryPolicy, exception_classes

__all__ = ["CancelSignal", "TaskContext", "TaskDef"]

Handler = Callable[..., Any]


class CancelSignal:
    """The worker's side of one run's cancellation: set once, when a cancel of the running
    task reaches the worker; read by the handler through `TaskContext.cancelled` (from any
    thread: a plain attribute, so polling it costs nothing)."""

    __slots__ = ("handler", "requested")

    def __init__(self) -> None:
        self.requested = False
        #: The asyncio task awaiting an async handler right now (cancelled on request), if any.
        self.handler: asyncio.Task[Any] | None = None

    def request(self) -> bool:
        """Ask the run to stop: cancels an async handler that is running; False if asked before."""
        if self.requested:
            return False
        self.requested = True
        if self.handler is not None:
            self.handler.cancel("spillway: the task was cancelled")
        return True


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler may ask for besides its payload (declare a parameter of this type)."""

    task_id: str
    type: str
    queue: str
    attempt: int
    max_retries: int
    # Private: set by the worker that runs the task; handlers read `cancelled`.
    _signal: CancelSignal | None = field(default=None, repr=False, compare=False)

    @property
    def last_attempt(self) -> bool:
        return self.attempt > self.max_retries

    @property
    def cancelled(self) -> bool:
        """Whether the task was cancelled while it ran: a sync handler should poll this and
        return early (an async handler is cancelled for it: it sees `CancelledError`)."""
        return self._signal is not None and self._signal.requested


@dataclass(slots=True)
class TaskDef:
    """A registered task type: how to validate its payload and how to run it."""

    name: str
    fn: Handler
    queue: str
    policy: RetryPolicy
    retry_jitter: bool
    payload_type: Any
    wants_context: bool
    is_async: bool
    adapter: TypeAdapter[Any] = field(repr=False)
    #: The priority of its tasks unless an enqueue names another.
    priority: Priority = "default"
    #: Its concurrency and rate limits across every worker; None: unlimited.
    limits: TypeLimits | None = None

    #: The lane of its tasks by priority, None for its own (filled by `build`).
    lanes: dict[str | None, str] = field(default_factory=dict, repr=False)

    def lane(self, priority: Priority | None = None) -> str:
        """The lane (stream) a task of this type is written to (`spillway.lanes`): looked up,
        not formatted, since every accepted task asks."""
        return self.lanes[priority]

    expires: float | None = None  # seconds from accept; None: never (spillway.expiry)
    # Which failures are retried (`spillway.retry.not_retried`); the worker decides, per run.
    retry_on: ExceptionClasses = (Exception,)
    no_retry_for: ExceptionClasses = ()
    callback_url: str | None = None  # its tasks' completion webhook unless one names another

    @classmethod
    def build(
        cls,
        fn: Handler,
        *,
        name: str,
        queue: str,
        policy: RetryPolicy,
        retry_jitter: bool = True,
        priority: Priority = "default",
        limits: TypeLimits | None = None,
        expires: float | None = None,
        retry_on: object = (Exception,),
        no_retry_for: object = (),
        callback_url: str | None = None,
    ) -> TaskDef:
        payload_type, wants_context = _inspect_signature(fn)
        return cls(
            name=name,
            fn=fn,
            queue=queue,
            policy=policy,
            retry_jitter=retry_jitter,
            payload_type=payload_type,
            wants_context=wants_context,
            is_async=inspect.iscoroutinefunction(fn),
            adapter=TypeAdapter(payload_type),
            priority=priority,
            limits=limits,
            lanes={
                level: lane_name(queue, level or priority, name if limits is not None else None)
                for level in (None, *PRIORITIES)
            },
            expires=expires,
            retry_on=exception_classes("retry_on", retry_on),
            no_retry_for=exception_classes("no_retry_for", no_retry_for),
            callback_url=callback_url,
        )

    def validate(self, payload: Any) -> Any:
        """The payload as the handler will receive it; `PayloadInvalid` names the bad field."""
        try:
            return self.adapter.validate_python(payload)
        except ValidationError as exc:
            raise PayloadInvalid(self.name, _errors(exc)) from exc

    def validate_json(self, payload: str | bytes) -> Any:
        try:
            return self.adapter.validate_json(payload)
        except ValidationError as exc:
            raise PayloadInvalid(self.name, _errors(exc)) from exc

    def encode(self, payload: Any) -> str:
        """Validate and serialise a payload for storage (canonical JSON of the validated value)."""
        value = self.validate(payload)
        try:
            return self.adapter.dump_json(value).decode()
        except Exception:
            return dumps(value)

    def schema(self) -> dict[str, Any]:
        """JSON Schema of the payload (for OpenAPI)."""
        return self.adapter.json_schema()

    def call(self, payload: Any, ctx: TaskContext) -> Awaitable[Any] | Any:
        return self.fn(payload, ctx) if self.wants_context else self.fn(payload)


def _inspect_signature(fn: Handler) -> tuple[Any, bool]:
    """(payload type, whether the handler takes a TaskContext) from the handler's signature."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise TypeError(f"task {fn.__qualname__} must take the payload as its first parameter")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    payload_type = hints.get(params[0].name, Any)
    wants_context = len(params) > 1 and (
        hints.get(params[1].name) is TaskContext or params[1].name in ("ctx", "context")
    )
    return payload_type, wants_context


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    # include_url/context off: the errors go into problem+json bodies and logs as plain JSON.
    raw = exc.errors(include_url=False, include_context=False, include_input=False)
    return [orjson.loads(orjson.dumps(e, default=str)) for e in raw]
