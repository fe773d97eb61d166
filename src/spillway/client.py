"""HTTP clients of a Spillway API: `Client` (blocking) and `AsyncClient`, both on httpx.

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        task_id = client.submit("resize_image", {"url": "...", "width": 640})
        record = client.wait(task_id, timeout=30)

Problem responses become the `SpillwayError` the server raised (`PayloadInvalid`,
`BacklogFull`, `TaskNotFound`, ...); any other refusal (401, 413, 415, malformed JSON) is a
`RequestRejected`. Network failures are httpx's own exceptions.

With ``retries=N``, `submit` sends a refused task again (429 `BacklogFull`, 503
`BrokerUnavailable`), up to N more times, each after the server's ``Retry-After`` plus up to
half of it again (jitter), capped at ``max_retry_wait``; every attempt carries the same
``Idempotency-Key`` (one is made when the caller gave none), so a retry never makes a second
task. With ``pace=True``, a 202 carrying an advisory ``Retry-After`` (the backlog is above the
server's SPILLWAY_SLOW_DOWN_AT) holds this client's next `submit` back that long (capped too).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import httpx

from spillway.app import EnqueueItem, TaskRef
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
from spillway.records import EnqueueResult, TaskRecord, TaskStatus

__all__ = ["AsyncClient", "Client", "RequestRejected", "error_from_problem"]

_PROBLEM_PREFIX = "urn:spillway:problem:"
_MAX_WAIT = 60.0  # the server's limit for one long-poll


class RequestRejected(SpillwayError):
    """The API refused the request for a reason of HTTP itself (auth, size, media type...)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")
        self.status = status
        self.problem = problem


def error_from_problem(
    status: int, problem: dict[str, Any], retry_after: float | None = None
) -> SpillwayError:
    """The `SpillwayError` a problem+json document stands for."""
    slug = str(problem.get("type", "")).removeprefix(_PROBLEM_PREFIX)
    detail = str(problem.get("detail", ""))
    wait = retry_after if retry_after is not None else 1.0
    task_id = str(problem.get("task_id", ""))
    match slug:
        case "unknown-task-type":
            return UnknownTaskType(
                str(problem.get("task_type", "")), list(problem.get("known", []))
            )
        case "payload-invalid":
            return PayloadInvalid(
                str(problem.get("task_type", "")), list(problem.get("errors", []))
            )
        case "idempotency-key-reused":
            return IdempotencyConflict("", task_id)
        case "backlog-full" | "caller-quota":
            limit = int(problem.get("limit", 0))
            full = CallerQuotaFull if slug == "caller-quota" else BacklogFull
            return full(str(problem.get("queue", "")), limit, retry_after=wait)
        case "outcome-unknown":
            return OutcomeUnknown(detail, retry_after=wait, task_id=task_id or None)
        case "broker-unavailable":
            return BrokerUnavailable(detail, retry_after=wait)
        case "task-not-found":
            return TaskNotFound(task_id)
        case "record-unreadable":
            return RecordUnreadable(task_id, str(problem.get("reason", detail)))
        case "task-not-cancellable":
            return TaskNotCancellable(task_id, str(problem.get("task_status", "")))
        case "queue-not-found":
            return UnknownQueue(str(problem.get("queue", "")), list(problem.get("known", [])))
        case "filter-invalid":
            return FilterInvalid(detail)
        case "configuration-error":
            return ConfigurationError(detail)
    return RequestRejected(status, problem)


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"title": response.reason_phrase, "detail": response.text[:500]}
    raise error_from_problem(response.status_code, problem, _retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _type_name(ref: TaskRef) -> str:
    if isinstance(ref, str):
        return ref
    return str(getattr(ref, "name", None) or getattr(ref, "__name__", ref))


def _seconds(delay: float | timedelta | None) -> float | None:
    return delay.total_seconds() if isinstance(delay, timedelta) else delay


def _submission(
    task_type: TaskRef,
    payload: Any,
    delay: float | timedelta | None,
    max_retries: int | None,
    timeout: float | None,
    expires: float | timedelta | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": _type_name(task_type), "payload": payload}
    if delay is not None:
        body["delay_s"] = _seconds(delay)
    if max_retries is not None:
        body["max_retries"] = max_retries
    if timeout is not None:
        body["timeout_s"] = timeout
    if expires is not None:
        body["expires_s"] = _seconds(expires)
    return body


def _batch(items: Iterable[EnqueueItem | tuple[TaskRef, Any]]) -> dict[str, Any]:
    tasks = []
    for item in items:
        it = item if isinstance(item, EnqueueItem) else EnqueueItem(item[0], item[1])
        body = _submission(it.type, it.payload, it.delay, it.max_retries, it.timeout, it.expires)
        if it.idempotency_key is not None:
            body["idempotency_key"] = it.idempotency_key
        tasks.append(body)
    return {"tasks": tasks}


def _batch_results(response: httpx.Response) -> list[EnqueueResult]:
    _raise_for(response)
    out = []
    for r in response.json()["results"]:
        if r.get("error"):
            error = error_from_problem(int(r["error"].get("status", 422)), r["error"])
            out.append(EnqueueResult(task_id=None, error=error))
        else:
            out.append(EnqueueResult(task_id=r["task_id"], duplicate=bool(r.get("duplicate"))))
    return out


def _record(response: httpx.Response) -> TaskRecord:
    _raise_for(response)
    return TaskRecord.model_validate(response.json())


def _outcome(record: TaskRecord) -> Any:
    if record.status is not TaskStatus.SUCCEEDED:
        raise TaskFailed(record.id, record.status.value, record.error)
    return record.result


@dataclass(frozen=True, slots=True)
class _Config:
    base_url: str
    api_key: str | None
    timeout: float

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def _key_header(idempotency_key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}


class _Pacing:
    """When a client's submits may go: retries of refused ones, and the pace 202s advise.

    Both clients use it, each with its own way to wait."""

    def __init__(self, retries: int, max_wait: float, pace: bool) -> None:
        if retries < 0 or max_wait < 0:
            raise ValueError("retries and max_retry_wait must not be negative")
        self.retries = retries
        self.max_wait = max_wait
        self.pace = pace
        #: The advisory Retry-After of the last 202 (seconds), None if it had none.
        self.advised: float | None = None
        self._not_before = 0.0

    def key(self, idempotency_key: str | None, retries: int) -> str | None:
        """The key every attempt sends: the caller's, else a new one when it may retry."""
        if idempotency_key is not None or not retries:
            return idempotency_key
        return uuid.uuid4().hex

    def held_back(self) -> float:
        """Seconds the next submit waits for the pace the last 202 advised."""
        return max(0.0, self._not_before - time.monotonic())

    def backoff(self, error: SpillwayError) -> float | None:
        """Seconds before sending a refused task again; None if the refusal is final."""
        if not isinstance(error, BacklogFull | BrokerUnavailable):
            return None
        jitter = random.uniform(1.0, 1.5)  # noqa: S311 - spreading clients, not cryptography
        return min(self.max_wait, error.retry_after * jitter)

    def accepted(self, response: httpx.Response) -> str:
        """The id a 202 names, noting the pace it advises."""
        self.advised = _retry_after(response)
        if self.pace and self.advised is not None:
            self._not_before = time.monotonic() + min(self.advised, self.max_wait)
        return str(response.json()["task_id"])


class Client:
    """A blocking client of a Spillway API; use it as a context manager or call `close`."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        retries: int = 0,
        max_retry_wait: float = 30.0,
        pace: bool = False,
    ) -> None:
        self._config = _Config(base_url, api_key, timeout)
        self._pacing = _Pacing(retries, max_retry_wait, pace)
        self._http = httpx.Client(
            base_url=base_url, headers=self._config.headers(), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(
        self,
        task_type: TaskRef,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        delay: float | timedelta | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        expires: float | timedelta | None = None,
        retries: int | None = None,
    ) -> str:
        """Enqueue one task; returns its id once the server has it durably.

        A refusal worth retrying is sent again up to `retries` times (default: the client's),
        after the server's Retry-After (see the module's docstring)."""
        body = _submission(task_type, payload, delay, max_retries, timeout, expires)
        pacing = self._pacing
        left = pacing.retries if retries is None else retries
        headers = _key_header(pacing.key(idempotency_key, left))
        time.sleep(pacing.held_back())
        while True:
            response = self._http.post("/tasks", json=body, headers=headers)
            try:
                _raise_for(response)
            except SpillwayError as exc:
                wait = pacing.backoff(exc)
                if wait is None or left <= 0:
                    raise
                left -= 1
                time.sleep(wait)
                continue
            return pacing.accepted(response)

    @property
    def advised_wait(self) -> float | None:
        """The advisory Retry-After (seconds) of the last accepted submit, or None: the
        server's backlog is above its slow-down threshold, so a producer may pause."""
        return self._pacing.advised

    def submit_many(
        self, items: Iterable[EnqueueItem | tuple[TaskRef, Any]]
    ) -> list[EnqueueResult]:
        """Enqueue many tasks in one request; each one succeeds or fails on its own."""
        return _batch_results(self._http.post("/tasks/batch", json=_batch(items)))

    def get(self, task_id: str) -> TaskRecord:
        """The task's status record; `TaskNotFound` for an unknown id."""
        return _record(self._http.get(f"/tasks/{task_id}"))

    def wait(self, task_id: str, timeout: float) -> TaskRecord:
        """The record once the task is terminal (long-polling); `ResultTimeout` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            wait = max(0.0, min(remaining, _MAX_WAIT))
            response = self._http.get(
                f"/tasks/{task_id}",
                params={"wait": f"{wait:.3f}"},
                timeout=wait + self._config.timeout,
            )
            record = _record(response)
            if record.terminal:
                return record
            if deadline - time.monotonic() <= 0:
                raise ResultTimeout(task_id, timeout)

    def result(self, task_id: str, timeout: float = 60.0) -> Any:
        """The task's result once it succeeded; else `TaskFailed` (dead, cancelled or expired)."""
        return _outcome(self.wait(task_id, timeout))

    def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task (a running one is stopped by its worker); `TaskNotCancellable` once
        it ended. The record answered says which: `cancelled`, or `running` with
        `cancel_requested_at` until its run stops."""
        return _record(self._http.delete(f"/tasks/{task_id}"))


class AsyncClient:
    """The asyncio twin of `Client`: the same methods, awaited."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = 0,
        max_retry_wait: float = 30.0,
        pace: bool = False,
    ) -> None:
        self._config = _Config(base_url, api_key, timeout)
        self._pacing = _Pacing(retries, max_retry_wait, pace)
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=self._config.headers(), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(
        self,
        task_type: TaskRef,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        delay: float | timedelta | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        expires: float | timedelta | None = None,
        retries: int | None = None,
    ) -> str:
        """Enqueue one task; returns its id once the server has it durably.

        A refusal worth retrying is sent again up to `retries` times (default: the client's),
        after the server's Retry-After (see the module's docstring)."""
        body = _submission(task_type, payload, delay, max_retries, timeout, expires)
        pacing = self._pacing
        left = pacing.retries if retries is None else retries
        headers = _key_header(pacing.key(idempotency_key, left))
        await asyncio.sleep(pacing.held_back())
        while True:
            response = await self._http.post("/tasks", json=body, headers=headers)
            try:
                _raise_for(response)
            except SpillwayError as exc:
                wait = pacing.backoff(exc)
                if wait is None or left <= 0:
                    raise
                left -= 1
                await asyncio.sleep(wait)
                continue
            return pacing.accepted(response)

    @property
    def advised_wait(self) -> float | None:
        """The advisory Retry-After (seconds) of the last accepted submit, or None: the
        server's backlog is above its slow-down threshold, so a producer may pause."""
        return self._pacing.advised

    async def submit_many(
        self, items: Iterable[EnqueueItem | tuple[TaskRef, Any]]
    ) -> list[EnqueueResult]:
        """Enqueue many tasks in one request; each one succeeds or fails on its own."""
        return _batch_results(await self._http.post("/tasks/batch", json=_batch(items)))

    async def get(self, task_id: str) -> TaskRecord:
        """The task's status record; `TaskNotFound` for an unknown id."""
        return _record(await self._http.get(f"/tasks/{task_id}"))

    async def wait(self, task_id: str, timeout: float) -> TaskRecord:
        """The record once the task is terminal (long-polling); `ResultTimeout` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            wait = max(0.0, min(remaining, _MAX_WAIT))
            response = await self._http.get(
                f"/tasks/{task_id}",
                params={"wait": f"{wait:.3f}"},
                timeout=wait + self._config.timeout,
            )
            record = _record(response)
            if record.terminal:
                return record
            if deadline - time.monotonic() <= 0:
                raise ResultTimeout(task_id, timeout)

    async def result(self, task_id: str, timeout: float = 60.0) -> Any:
        """The task's result once it succeeded; else `TaskFailed` (dead, cancelled or expired)."""
        return _outcome(await self.wait(task_id, timeout))

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task (a running one is stopped by its worker); `TaskNotCancellable` once
        it ended. The record answered says which: `cancelled`, or `running` with
        `cancel_requested_at` until its run stops."""
        return _record(await self._http.delete(f"/tasks/{task_id}"))
