"""Task declarations: the handler, its payload type, and its retry and timeout policy."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from spillway.codec import dumps
from spillway.errors import PayloadInvalid
from spillway.retry import RetryPolicy

__all__ = ["TaskContext", "TaskDef"]

Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler may ask for besides its payload (declare a parameter of this type)."""

    task_id: str
    type: str
    queue: str
    attempt: int
    max_retries: int

    @property
    def last_attempt(self) -> bool:
        return self.attempt > self.max_retries


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

    @classmethod
    def build(
        cls,
        fn: Handler,
        *,
        name: str,
        queue: str,
        policy: RetryPolicy,
        retry_jitter: bool = True,
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
