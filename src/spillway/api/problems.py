"""Every error the HTTP API answers, as RFC 9457 ``application/problem+json``, in one place.

A problem's ``type`` is ``urn:spillway:problem:<slug>``; the slug is what `spillway.client`
turns back into the matching `SpillwayError`. Errors of HTTP itself (unknown route, wrong
method) use ``about:blank`` with the status phrase as title, as RFC 9457 suggests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from spillway.errors import (
    BacklogFull,
    BrokerUnavailable,
    CallerQuotaFull,
    ConfigurationError,
    FilterInvalid,
    IdempotencyConflict,
    OutcomeUnknown,
    PayloadInvalid,
    RecordUnreadable,
    ResultTimeout,
    SpillwayError,
    TaskFailed,
    TaskNotCancellable,
    TaskNotFound,
    UnknownQueue,
    UnknownTaskType,
)
from spillway.pacing import header_seconds, spread

__all__ = [
    "PROBLEM_PREFIX",
    "SLUGS",
    "HTTPProblem",
    "Problem",
    "Rendered",
    "describe",
    "describe_errors",
    "render",
]

log = logging.getLogger("spillway.api")

PROBLEM_PREFIX = "urn:spillway:problem:"
CONTENT_TYPE = b"application/problem+json"

Rendered = tuple[int, list[tuple[bytes, bytes]], bytes]
"""A response ready to send: status, headers, body."""


class HTTPProblem(Exception):
    """A request refused by the HTTP layer itself (auth, size, media type, malformed JSON)."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


#: slug -> (status, title) for each error of the core, most specific class first.
_CORE: list[tuple[type[SpillwayError], str, int, str]] = [
    (UnknownTaskType, "unknown-task-type", 422, "Unknown task type"),
    (PayloadInvalid, "payload-invalid", 422, "Invalid payload"),
    (IdempotencyConflict, "idempotency-key-reused", 422, "Idempotency key reused"),
    (CallerQuotaFull, "caller-quota", 429, "Caller quota reached"),
    (BacklogFull, "backlog-full", 429, "Backlog full"),
    (OutcomeUnknown, "outcome-unknown", 503, "Queue unavailable, outcome unknown"),
    (BrokerUnavailable, "broker-unavailable", 503, "Queue unavailable"),
    (TaskNotFound, "task-not-found", 404, "Task not found"),
    # 409, not 500: the server works; this one task's stored state does not fit the resource.
    (RecordUnreadable, "record-unreadable", 409, "Task record unreadable"),
    (TaskNotCancellable, "task-not-cancellable", 409, "Task not cancellable"),
    (UnknownQueue, "queue-not-found", 404, "Queue not found"),
    (FilterInvalid, "filter-invalid", 422, "Invalid filter"),
    (ResultTimeout, "result-timeout", 504, "Result timeout"),
    (TaskFailed, "task-failed", 409, "Task failed"),
    (ConfigurationError, "configuration-error", 500, "Server misconfigured"),
]

#: Every slug the API can answer with (the client knows each one; a test checks it).
SLUGS = frozenset(
    [slug for _, slug, _, _ in _CORE]
    + [
        "bad-request",
        "invalid-json",
        "unsupported-json",
        "payload-too-large",
        "request-timeout",
        "request-header-too-large",
        "unsupported-media-type",
        "unauthorized",
        "forbidden",
        "cross-site-request",
        "host-not-allowed",
        "request-invalid",
        "internal-error",
    ]
)

_TITLES = {
    "bad-request": "Bad request",
    "invalid-json": "Malformed JSON",
    "unsupported-json": "Unsupported JSON value",
    "payload-too-large": "Request body too large",
    "request-timeout": "Request too slow",
    "request-header-too-large": "Request head too large",
    "unsupported-media-type": "Unsupported media type",
    "unauthorized": "Unauthorized",
    "forbidden": "Forbidden",
    "cross-site-request": "Cross-site request refused",
    "host-not-allowed": "Host not served",
    "request-invalid": "Invalid request",
    "internal-error": "Internal server error",
    **{slug: title for _, slug, _, title in _CORE},
}


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem document with its status and extra response headers."""

    status: int
    doc: dict[str, Any]
    headers: dict[str, str]


def describe(
    exc: BaseException,
    *,
    body_loc: Sequence[str | int] = ("body", "payload"),
    admin: bool = False,
) -> Problem:
    """The problem document for any exception the API lets out.

    ``body_loc`` is where a task's payload sits in the request body: payload validation errors
    are reported from the body's root, so they name the field as the client sent it. What
    only an operator needs (the registered task types, why a stored record is unreadable) is
    in the document for an ``admin`` only; nothing internal (exception text, paths) is in any.
    """
    if isinstance(exc, HTTPProblem):
        return _problem(
            exc.status, exc.slug, _TITLES.get(exc.slug, "Error"), exc.detail, exc.headers, exc.extra
        )
    if isinstance(exc, SpillwayError):
        return _core(exc, tuple(body_loc), admin)
    if isinstance(exc, RequestValidationError):
        errors = [_plain_error(e) for e in exc.errors()]
        return _problem(
            422,
            "request-invalid",
            _TITLES["request-invalid"],
            describe_errors(errors),
            {},
            {"errors": errors},
        )
    if isinstance(exc, HTTPException):
        phrase = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if isinstance(exc.detail, str) else phrase
        return _problem(exc.status_code, None, phrase, detail, dict(exc.headers or {}), {})
    log.error("unhandled error", exc_info=exc)
    return _problem(
        500,
        "internal-error",
        _TITLES["internal-error"],
        "the server could not handle this request",
        {},
        {},
    )


def render(
    exc: BaseException,
    *,
    body_loc: Sequence[str | int] = ("body", "payload"),
    admin: bool = False,
) -> Rendered:
    """The problem+json response for any exception the API lets out (see `describe`)."""
    problem = describe(exc, body_loc=body_loc, admin=admin)
    body = orjson.dumps(problem.doc)
    headers = [(b"content-type", CONTENT_TYPE), (b"content-length", str(len(body)).encode())]
    for name, value in problem.headers.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return problem.status, headers, body


def _core(exc: SpillwayError, body_loc: tuple[str | int, ...], admin: bool) -> Problem:
    slug, status, title = next(
        ((s, code, t) for cls, s, code, t in _CORE if isinstance(exc, cls)),
        ("internal-error", 500, _TITLES["internal-error"]),
    )
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    detail = str(exc)
    if isinstance(exc, UnknownTaskType):
        # A client learns that its type is unknown, not which types exist.
        if not admin:
            detail = exc.brief
        extra = {
            "task_type": exc.task_type,
            "errors": [
                {"loc": [*body_loc[:-1], "type"], "msg": detail, "type": "unknown_task_type"}
            ],
        }
        if admin:
            extra["known"] = exc.known
    elif isinstance(exc, PayloadInvalid):
        extra = {
            "task_type": exc.task_type,
            "errors": [_payload_error(e, body_loc) for e in exc.errors],
        }
        detail = f"invalid payload for {exc.task_type!r}: {describe_errors(extra['errors'])}"
    elif isinstance(exc, BacklogFull | BrokerUnavailable):
        # A full backlog's wait is paced and jittered already (`spillway.pacing`); Redis
        # trouble has no drain figures, so it is only spread, over 1 to 3 times its value.
        wait = exc.retry_after if isinstance(exc, BacklogFull) else spread(exc.retry_after)
        headers["Retry-After"] = header_seconds(wait)
        if isinstance(exc, BacklogFull):
            extra = {"queue": exc.queue, "limit": exc.limit}
        elif isinstance(exc, OutcomeUnknown) and exc.task_id:
            extra = {"task_id": exc.task_id}
            detail = (
                "the task queue's connection broke before it confirmed the write, so the task "
                f"may have been enqueued as {exc.task_id}: GET /tasks/{exc.task_id} tells, or "
                "send tasks with an Idempotency-Key to retry them safely"
            )
        else:
            detail = "the task queue is unreachable or too slow; nothing was enqueued"
    elif isinstance(exc, TaskNotFound | TaskNotCancellable | RecordUnreadable):
        extra = {"task_id": exc.task_id}
        if isinstance(exc, TaskNotCancellable):
            extra["task_status"] = exc.status
        elif isinstance(exc, RecordUnreadable):
            if admin:
                extra["reason"] = exc.reason
            else:
                detail = f"the stored record of task {exc.task_id!r} cannot be read"
    elif isinstance(exc, UnknownQueue):
        extra = {"queue": exc.queue}
        if admin:
            extra["known"] = exc.known
        else:
            detail = f"no queue named {exc.queue!r}"
    elif isinstance(exc, ConfigurationError):
        log.error("configuration error: %s", exc)
        detail = "the server is misconfigured; see its log"
    return _problem(status, slug, title, detail, headers, extra)


def _payload_error(error: dict[str, Any], body_loc: tuple[str | int, ...]) -> dict[str, Any]:
    # Validator errors (they carry a "type") are relative to the payload; the few that
    # `Spillway.prepare` writes itself name a field of the request, such as "payload".
    loc = list(error.get("loc", ()))
    root = list(body_loc) if "type" in error else list(body_loc[:-1])
    out = {"loc": root + loc, "msg": error.get("msg", "invalid")}
    if "type" in error:
        out["type"] = error["type"]
    return out


def _plain_error(error: Any) -> dict[str, Any]:
    e = dict(error)
    return {
        "loc": list(e.get("loc", ())),
        "msg": str(e.get("msg", "invalid")),
        "type": str(e.get("type", "value_error")),
    }


def describe_errors(errors: list[dict[str, Any]]) -> str:
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _problem(
    status: int,
    slug: str | None,
    title: str,
    detail: str,
    headers: dict[str, str],
    extra: dict[str, Any],
) -> Problem:
    doc = {
        "type": PROBLEM_PREFIX + slug if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Problem(status, doc, headers)
