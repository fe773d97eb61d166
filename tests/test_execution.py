"""How a run ends, through a real burst worker: which failures are retried (`retry_on`,
`no_retry_for`, a run's timeout), a handler's `Retry(after=)` and `Fail`, and what the record,
the dead letter, the log and the outcome counts say about it."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from tests.engine import Item, drain

from spillway import Fail, Retry, Spillway, TaskContext, TaskStatus, execution, loops
from spillway.broker import Delivery, Started
from spillway.execution import execute
from spillway.retry import RetryPolicy


async def _dead_errors(app: Spillway) -> list[tuple[str, int, str]]:
    return [(d.id, d.attempts, d.error) for d in await app.dead_letters()]


async def test_an_exception_outside_retry_on_is_dead_after_one_attempt(app: Spillway) -> None:
    runs: list[int] = []

    @app.task(max_retries=3, retry_on=(ConnectionError,))
    async def lookup(item: Item, ctx: TaskContext) -> int:
        runs.append(ctx.attempt)
        raise KeyError("sku")

    task_id = await app.enqueue("lookup", {"n": 1})
    await drain(app)

    record = await app.get(task_id)
    error = "KeyError: 'sku' (not retried: not in retry_on)"
    assert (record.status, record.attempts, record.error) == (TaskStatus.DEAD, 1, error)
    assert runs == [1]
    assert await _dead_errors(app) == [(task_id, 1, error)]
    assert (await app.stats()).counts["lookup"] == {"dead": 1}


async def test_an_exception_in_retry_on_is_retried(app: Spillway) -> None:
    runs: list[int] = []

    @app.task(max_retries=3, retry_base=0.01, retry_on=[ConnectionError])
    async def fetch(item: Item, ctx: TaskContext) -> str:
        runs.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionRefusedError("partner down")  # a subclass counts
        return "ok"

    task_id = await app.enqueue("fetch", {"n": 1})
    await drain(app)

    assert await app.result(task_id, timeout=1) == "ok"
    assert runs == [1, 2]
    assert (await app.stats()).counts["fetch"] == {"retry": 1, "succeeded": 1}


async def test_no_retry_for_wins_over_retry_on_and_the_log_says_why(
    app: Spillway, caplog: pytest.LogCaptureFixture
) -> None:
    # UnicodeError is a ValueError: retry_on takes it, no_retry_for is checked first.
    @app.task(max_retries=3, retry_on=(ValueError,), no_retry_for=(UnicodeError,))
    async def decode(item: Item) -> None:
        raise UnicodeError("not utf-8")

    task_id = await app.enqueue("decode", {"n": 1})
    with caplog.at_level(logging.ERROR, logger="spillway.worker"):
        await drain(app)

    record = await app.get(task_id)
    error = "UnicodeError: not utf-8 (not retried: no_retry_for)"
    assert (record.status, record.attempts, record.error) == (TaskStatus.DEAD, 1, error)
    assert await _dead_errors(app) == [(task_id, 1, error)]
    lines = [r.getMessage() for r in caplog.records if task_id in r.getMessage()]
    assert lines == [
        f"task {task_id} (decode) dead on attempt 1, not retried (no_retry_for): {error}"
    ]


async def test_retry_after_waits_that_delay_instead_of_the_backoff_and_uses_an_attempt(
    app: Spillway,
) -> None:
    started: list[datetime] = []
    errors: list[str | None] = []

    # A backoff of 60 s: a drain that ends in seconds shows `after` replaced it.
    @app.task(max_retries=3, retry_base=60, retry_cap=60, retry_jitter=False)
    async def call_partner(item: Item, ctx: TaskContext) -> str:
        record = await app.get(ctx.task_id)  # as the run sees it: started_at of this attempt
        assert record.started_at is not None
        started.append(record.started_at)
        errors.append(record.error)
        if ctx.attempt == 1:
            raise Retry(after=0.2, reason="429 from the partner")
        return "ok"

    task_id = await app.enqueue("call_partner", {"n": 1})
    await asyncio.wait_for(drain(app), 10)

    assert await app.result(task_id, timeout=1) == "ok"
    assert (await app.get(task_id)).attempts == 2
    # Both times are Redis's (begin.lua): attempt 2 starts at least 0.2 s after attempt 1's
    # outcome was stored, and nowhere near the 60 s backoff.
    assert timedelta(seconds=0.2) <= started[1] - started[0] < timedelta(seconds=5)
    assert errors == [None, "Retry: 429 from the partner (retry after 0.2 s)"]
    assert (await app.stats()).counts["call_partner"] == {"retry": 1, "succeeded": 1}


async def test_retry_after_is_the_stored_retry_delay_exactly(app: Spillway) -> None:
    @app.task(retry_base=60, retry_cap=60)
    async def call_partner(item: Item) -> None:
        raise Retry(after=0.25)

    run = Started(
        Delivery("default", 0, "1-0", "t1"), "call_partner", '{"n": 1}', 1,
        RetryPolicy(3, 30, 60, 60), 0,
    )  # fmt: skip
    outcome = await execute(app.tasks["call_partner"], run, None)

    assert (outcome.kind, outcome.retry_delay_ms, outcome.attempts) == ("retry", 250, 1)


async def test_retry_is_obeyed_whatever_no_retry_for_says_and_is_dead_once_retries_run_out(
    app: Spillway,
) -> None:
    runs: list[int] = []

    @app.task(max_retries=2, no_retry_for=(Exception,))
    async def poll(item: Item, ctx: TaskContext) -> None:
        runs.append(ctx.attempt)
        raise Retry(after=0)

    task_id = await app.enqueue("poll", {"n": 1})
    await drain(app)

    record = await app.get(task_id)
    error = "Retry: retry after 0 s (no retries left)"
    assert (record.status, record.attempts, record.error) == (TaskStatus.DEAD, 3, error)
    assert runs == [1, 2, 3]
    assert await _dead_errors(app) == [(task_id, 3, error)]
    assert (await app.stats()).counts["poll"] == {"retry": 2, "dead": 1}


async def test_fail_is_dead_at_once_with_its_message(app: Spillway) -> None:
    runs: list[int] = []

    @app.task(max_retries=3)
    async def charge(item: Item, ctx: TaskContext) -> None:
        runs.append(ctx.attempt)
        raise Fail("card declined")

    task_id = await app.enqueue("charge", {"n": 1})
    await drain(app)

    record = await app.get(task_id)
    assert (record.status, record.attempts, record.error) == (
        TaskStatus.DEAD, 1, "Fail: card declined",
    )  # fmt: skip
    assert record.traceback is not None
    assert "card declined" in record.traceback
    assert runs == [1]
    assert await _dead_errors(app) == [(task_id, 1, "Fail: card declined")]
    assert (await app.stats()).counts["charge"] == {"dead": 1}


async def test_fail_from_a_sync_handler_is_dead_even_if_retry_on_names_it(app: Spillway) -> None:
    @app.task(max_retries=3, retry_on=(Fail,))
    def refuse(item: Item) -> None:
        raise Fail

    task_id = await app.enqueue("refuse", {"n": 1})
    await drain(app)

    record = await app.get(task_id)
    assert (record.status, record.attempts, record.error) == (TaskStatus.DEAD, 1, "Fail")


async def test_a_timeout_is_a_timeout_error_to_the_classification(app: Spillway) -> None:
    @app.task(max_retries=3, timeout=0.2, retry_on=(ConnectionError,))
    async def slow(item: Item) -> None:
        await asyncio.sleep(30)

    task_id = await app.enqueue("slow", {"n": 1})
    await drain(app)

    record = await app.get(task_id)
    assert (record.status, record.attempts) == (TaskStatus.DEAD, 1)
    assert record.error == (
        "TimeoutError: the task ran longer than its timeout of 0.2 s (not retried: not in retry_on)"
    )


async def test_a_handler_that_waits_after_working_is_bounded_from_its_start(
    app: Spillway,
) -> None:
    # Its timeout is armed only once it waits (a handler that never waits needs none), and
    # counts from the start of the run, not from that first wait.
    @app.task(max_retries=0, timeout=1.5)
    async def busy_then_slow(item: Item) -> None:
        time.sleep(1.0)  # noqa: ASYNC251 - its first step: work before any wait
        await asyncio.sleep(30)

    task_id = await app.enqueue("busy_then_slow", {"n": 1})
    await drain(app)

    record = await app.get(task_id)
    assert record.status == TaskStatus.DEAD
    assert (record.error or "").startswith(
        "TimeoutError: the task ran longer than its timeout of 1.5 s"
    )
    assert record.started_at is not None
    assert record.finished_at is not None
    ran = (record.finished_at - record.started_at).total_seconds()
    assert 1.4 <= ran < 2.3  # 2.5 if the timeout counted from the wait


async def test_a_handler_that_never_waits_arms_no_timer(
    app: Spillway, monkeypatch: pytest.MonkeyPatch
) -> None:
    armed: list[float] = []
    real = loops.RunTimeout

    def spy(loop: asyncio.AbstractEventLoop, task: asyncio.Task[object], delay: float) -> Any:
        armed.append(delay)
        return real(loop, task, delay)

    monkeypatch.setattr(execution, "RunTimeout", spy)

    @app.task(timeout=7)
    async def quick(item: Item) -> int:
        return item.n * 2

    @app.task(timeout=7)
    async def waits(item: Item) -> int:
        await asyncio.sleep(0.01)
        return item.n * 3

    quick_id = await app.enqueue("quick", {"n": 2})
    await drain(app)
    assert await app.result(quick_id, timeout=1) == 4
    assert armed == []
    waits_id = await app.enqueue("waits", {"n": 2})
    await drain(app)
    assert await app.result(waits_id, timeout=1) == 6
    assert len(armed) == 1
    assert 6.5 < armed[0] <= 7


@pytest.mark.parametrize("after", [-1, -0.001, float("nan"), float("inf"), 2e9])
def test_retry_after_must_be_a_finite_number_of_seconds_at_least_zero(after: float) -> None:
    with pytest.raises(ValueError, match=r"Retry\(after=.*\): after is a finite number"):
        Retry(after=after)


@pytest.mark.parametrize("after", ["5", True, [1]])
def test_retry_after_that_is_not_a_number_is_a_type_error(after: object) -> None:
    with pytest.raises(TypeError, match="after is a number of seconds or None"):
        Retry(after=after)  # type: ignore[arg-type]


def test_retry_without_after_waits_the_backoff() -> None:
    assert Retry().after is None
    assert str(Retry()) == "retry after the backoff"
    assert Retry(3).after == 3.0
