"""`execute`: run one task's handler and say how it ended (the outcome the worker stores).

The worker (`spillway.worker`) decides when a task runs and stores what this returns; here is
what a run is: the payload validated, the handler called under the task's timeout (a sync
handler in the worker's thread pool), the result serialised, and a failure turned into a
retry with backoff or, with no attempts left, a dead letter.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import traceback
from concurrent.futures import Executor
from typing import Any

from spillway.broker import Outcome, Started
from spillway.codec import JSONError, dumps
from spillway.errors import PayloadInvalid
from spillway.retry import backoff_delay
from spillway.tasks import TaskContext, TaskDef

__all__ = ["execute"]

log = logging.getLogger("spillway.worker")

_TRACEBACK_LIMIT = 4096


async def execute(task: TaskDef | None, s: Started, executor: Executor | None) -> Outcome:
    """Run one task under its timeout (a sync handler on `executor`); how it ended.

    A failure with attempts left is a retry after `backoff_delay`; without, it is dead.
    """
    d = s.delivery
    if task is None:
        return Outcome(
            d,
            s.type,
            "dead",
            f"UnknownTaskType: no handler for {s.type!r}",
            attempts=s.attempts,
        )
    try:
        payload = task.validate_json(s.payload)
    except PayloadInvalid as exc:
        return Outcome(d, s.type, "dead", f"PayloadInvalid: {exc}", attempts=s.attempts)
    policy = s.policy
    ctx = TaskContext(d.task_id, s.type, d.queue, s.attempts, policy.max_retries)
    started = time.monotonic()
    try:
        async with asyncio.timeout(policy.timeout):
            if task.is_async:
                result = await task.call(payload, ctx)
            else:
                loop = asyncio.get_running_loop()
                call = functools.partial(task.call, payload, ctx)
                result = await loop.run_in_executor(executor, call)
        value = dumps(result)
    except TimeoutError as exc:
        if time.monotonic() - started >= policy.timeout:
            limit = policy.timeout
            error = f"TimeoutError: the task ran longer than its timeout of {limit:g} s"
        else:
            error = _describe(exc)
        return _failure(s, task.retry_jitter, error, exc)
    except JSONError as exc:
        return _failure(s, task.retry_jitter, f"ResultInvalid: {exc}", exc)
    except Exception as exc:
        return _failure(s, task.retry_jitter, _describe(exc), exc)
    else:
        return Outcome(d, s.type, "succeeded", value, attempts=s.attempts)


def _failure(s: Started, jitter: bool, error: str, exc: BaseException) -> Outcome:
    d = s.delivery
    summary = "".join(traceback.format_exception(exc, limit=-8))[-_TRACEBACK_LIMIT:]
    policy = s.policy
    if s.attempts <= policy.max_retries:
        delay = backoff_delay(s.attempts, policy.base, policy.cap, jitter=jitter)
        log.warning(
            "task %s (%s) attempt %d failed, retrying in %.2fs: %s",
            d.task_id, s.type, s.attempts, delay, error, extra=_task_fields(s),
        )  # fmt: skip
        return Outcome(d, s.type, "retry", error, summary, int(delay * 1000), s.attempts)
    log.error(
        "task %s (%s) dead after %d attempts: %s", d.task_id, s.type, s.attempts, error,
        extra=_task_fields(s),
    )  # fmt: skip
    return Outcome(d, s.type, "dead", error, summary, 0, s.attempts)


def _task_fields(s: Started) -> dict[str, Any]:
    # Structured fields of a task's log line (never its payload).
    return {"task_id": s.delivery.task_id, "task_type": s.type, "attempt": s.attempts}


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
