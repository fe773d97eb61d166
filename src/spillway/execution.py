"""`execute`: run one task's handler and say how it ended (the outcome the worker stores).

The worker (`spillway.worker`) decides when a task runs and stores what this returns; here is
what a run is: the payload validated, the handler called under the task's timeout (a sync
handler in the worker's thread pool), the result serialised, and a failure turned into a
retry with backoff or, with no attempts left, a dead letter.

A failure the task's ``retry_on``/``no_retry_for`` exclude is dead at once, as is a `Fail`;
a `Retry` is retried after its own delay. Either kind of retry uses up an attempt.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
import traceback
from collections.abc import Coroutine
from concurrent.futures import Executor
from typing import Any, cast

from spillway.broker import Outcome, Started
from spillway.codec import JSONError, dumps
from spillway.errors import Fail, PayloadInvalid, Retry
from spillway.lanes import parse_lane
from spillway.loops import RunTimeout, Stepped
from spillway.retry import backoff_delay, not_retried
from spillway.tasks import CancelSignal, TaskContext, TaskDef

__all__ = ["execute", "unexpected"]

log = logging.getLogger("spillway.worker")

_TRACEBACK_LIMIT = 4096


async def execute(
    task: TaskDef | None,
    s: Started,
    executor: Executor | None,
    signal: CancelSignal | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Outcome:
    """Run one task under its timeout (a sync handler on `executor`); how it ended.

    A failure with attempts left is a retry after `backoff_delay`; without, it is dead. Once
    `signal` is requested the run is `cancelled`, however the handler then ends: an async
    handler is cancelled where it awaits, a sync one may poll `TaskContext.cancelled`.
    It runs in a task of its own (`loop` is that task's, when the caller knows it: asking
    costs a system call on Python 3.11, `spillway.loops`).
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
    queue = _queue_of(d.queue)
    ctx = TaskContext(d.task_id, s.type, queue, s.attempts, policy.max_retries, signal)
    if ctx.cancelled:
        return _cancelled(s)
    started = time.monotonic()
    loop = loop or asyncio.get_running_loop()
    current = asyncio.current_task(loop)
    if current is None:
        raise RuntimeError("execute runs in a task")
    try:
        if task.is_async:
            if signal is not None:
                signal.handler = current
            try:
                coro = cast(Coroutine[Any, Any, Any], task.call(payload, ctx))
                result = await _bounded(coro, loop, current, policy.timeout)
            finally:
                if signal is not None:
                    signal.handler = None
        else:
            async with RunTimeout(loop, current, policy.timeout):
                # In a copy of this context: the handler's own spans (and any context variable
                # it reads) see the attempt's, as an async handler does.
                call = functools.partial(contextvars.copy_context().run, task.call, payload, ctx)
                result = await loop.run_in_executor(executor, call)
        value = dumps(result)
    except asyncio.CancelledError as exc:
        if not ctx.cancelled:
            if current.cancelling():
                raise  # the worker's shutdown: the delivery is handed back, not finished
            # Nobody cancelled this run: the handler (or a library under it) let a
            # CancelledError of its own out. A failure like any other; re-raised, the run
            # would end with no outcome and its delivery stay claimed, renewed, for ever.
            # Classified as the ordinary error it is (CancelledError is no Exception, so
            # retry_on would never match it).
            stray = RuntimeError("CancelledError raised by the handler, no cancel asked for")
            stray.__cause__ = exc
            return _failure(s, task, "CancelledError: raised by the handler", stray)
        # Our own cancellation (CancelSignal.request) ends here: the run task carries on to
        # store the outcome, so it must not stay marked as being cancelled.
        current.uncancel()
        return _cancelled(s)
    except TimeoutError as exc:
        if ctx.cancelled:
            return _cancelled(s)
        if time.monotonic() - started >= policy.timeout:
            limit = policy.timeout
            error = f"TimeoutError: the task ran longer than its timeout of {limit:g} s"
        else:
            error = _describe(exc)
        return _failure(s, task, error, exc)
    except Exception as exc:
        if ctx.cancelled:
            return _cancelled(s)
        if isinstance(exc, JSONError):
            return _failure(s, task, f"ResultInvalid: {exc}", exc)
        return _failure(s, task, _describe(exc), exc)
    if ctx.cancelled:  # it returned after all (a sync handler that polled, or finished anyway)
        return _cancelled(s)
    return Outcome(d, s.type, "succeeded", value, attempts=s.attempts)


async def _bounded(
    coro: Coroutine[Any, Any, Any],
    loop: asyncio.AbstractEventLoop,
    current: asyncio.Task[Any],
    timeout: float,
) -> Any:
    """An async handler's result, its run bounded by `timeout` seconds from now.

    Its first step runs at once, before any timer: a handler that returns without waiting
    (most do, or wait only on what is already done) cannot be interrupted by a timer anyway,
    and a run with a timer armed first cost 3.6 us against 0.63 this way under uvloop, of a
    worker's 38 us per task at 5,000 tasks/s (docs/benchmarks.md, "A run's timeout when the
    handler never waits"). A handler that waits is bounded by what is left.
    """
    started = loop.time()
    try:
        pending = coro.send(None)
    except StopIteration as done:
        return done.value
    # On the loop's clock, as RunTimeout's own: the same deadline a timer armed first had.
    async with RunTimeout(loop, current, timeout - (loop.time() - started)):
        return await Stepped(coro, pending)


@functools.lru_cache(maxsize=256)
def _queue_of(lane: str) -> str:
    # A worker's deliveries come from the few lanes it reads: parsing the name again for each
    # run was 1.2 % of a worker's samples at 5,000 tasks/s.
    return parse_lane(lane).queue


def unexpected(s: Started, task: TaskDef | None, exc: Exception) -> Outcome:
    """The outcome of a run that `execute` could not finish itself (a bug between the handler
    and its outcome): a failure under the task's retry policy."""
    if task is None:
        return Outcome(s.delivery, s.type, "dead", _describe(exc), attempts=s.attempts)
    return _failure(s, task, _describe(exc), exc)


def _cancelled(s: Started) -> Outcome:
    log.info("task %s (%s) cancelled while running", s.delivery.task_id, s.type,
             extra=_task_fields(s))  # fmt: skip
    return Outcome(s.delivery, s.type, "cancelled", "", attempts=s.attempts)


def _failure(s: Started, task: TaskDef, error: str, exc: BaseException) -> Outcome:
    d = s.delivery
    summary = "".join(traceback.format_exception(exc, limit=-8))[-_TRACEBACK_LIMIT:]
    policy = s.policy
    # The handler's own Retry or Fail is obeyed whatever the classification says.
    if isinstance(exc, Fail):
        why: str | None = "Fail"
    elif isinstance(exc, Retry):
        why = None
    else:
        why = not_retried(exc, task.retry_on, task.no_retry_for)
        if why is not None:
            error = f"{error} (not retried: {why})"
    if why is not None:
        log.error(
            "task %s (%s) dead on attempt %d, not retried (%s): %s", d.task_id, s.type,
            s.attempts, why, error, extra=_task_fields(s),
        )  # fmt: skip
        return Outcome(d, s.type, "dead", error, summary, 0, s.attempts)
    if s.attempts <= policy.max_retries:
        after = exc.after if isinstance(exc, Retry) else None
        if after is None:
            after = backoff_delay(s.attempts, policy.base, policy.cap, jitter=task.retry_jitter)
        log.warning(
            "task %s (%s) attempt %d failed, retrying in %.2fs: %s",
            d.task_id, s.type, s.attempts, after, error, extra=_task_fields(s),
        )  # fmt: skip
        return Outcome(d, s.type, "retry", error, summary, int(after * 1000), s.attempts)
    if isinstance(exc, Retry):
        # "Retry: retry after 2 s" alone would read as if the task were still waiting.
        error = f"{error} (no retries left)"
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
