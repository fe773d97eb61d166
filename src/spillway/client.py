"""HTTP clients of a Spillway API: `Client` (blocking) and `AsyncClient`, both on httpx.

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        task_id = client.submit("resize_image", {"url": "...", "width": 640})
        record = client.wait(task_id, timeout=30)

Problem responses become the `SpillwayError` the server raised (`PayloadInvalid`,
`BacklogFull`, `TaskNotFound`, ...); any other refusal (401, 413, 415, malformed JSON) is a
`RequestRejected`. Network failures are httpx's own exceptions.
"""

from __future__ import annotations

import time
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
    ConfigurationError,
    IdempotencyConflict,
    OutcomeUnknown,
    PayloadInvalid,
    RecordUnreadable,
    ResultTimeout,
    SpillwayError,
    TaskFailed,
    TaskNotCancellable,
    TaskNotFound,
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
        case "backlog-full":
            limit = int(problem.get("limit", 0))
            return BacklogFull(str(problem.get("queue", "")), limit, retry_after=wait)
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
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": _type_name(task_type), "payload": payload}
    if delay is not None:
        body["delay_s"] = _seconds(delay)
    if max_retries is not None:
        body["max_retries"] = max_retries
    if timeout is not None:
        body["timeout_s"] = timeout
    return body


def _batch(items: Iterable[EnqueueItem | tuple[TaskRef, Any]]) -> dict[str, Any]:
    tasks = []
    for item in items:
        it = item if isinstance(item, EnqueueItem) else EnqueueItem(item[0], item[1])
        body = _submission(it.type, it.payload, it.delay, it.max_retries, it.timeout)
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


class Client:
    """A blocking client of a Spillway API; use it as a context manager or call `close`."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._config = _Config(base_url, api_key, timeout)
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
    ) -> str:
        """Enqueue one task; returns its id once the server has it durably."""
        body = _submission(task_type, payload, delay, max_retries, timeout)
        response = self._http.post("/tasks", json=body, headers=_key_header(idempotency_key))
        _raise_for(response)
        return str(response.json()["task_id"])

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
        """The task's result once it succeeded; `TaskFailed` if it ended dead or cancelled."""
        return _outcome(self.wait(task_id, timeout))

    def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task that has not started; `TaskNotCancellable` once it runs or ended."""
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
    ) -> None:
        self._config = _Config(base_url, api_key, timeout)
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
    ) -> str:
        """Enqueue one task; returns its id once the server has it durably."""
        body = _submission(task_type, payload, delay, max_retries, timeout)
        response = await self._http.post("/tasks", json=body, headers=_key_header(idempotency_key))
        _raise_for(response)
        return str(response.json()["task_id"])

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
        """The task's result once it succeeded; `TaskFailed` if it ended dead or cancelled."""
        return _outcome(await self.wait(task_id, timeout))

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task that has not started; `TaskNotCancellable` once it runs or ended."""
        return _record(await self._http.delete(f"/tasks/{task_id}"))
