"""Scenario 16 (issue 20, part 4): a surge from two callers sharing a queue, one of them with
100 times the other's tasks, under a caller quota.

A real `spillway api` process (SPILLWAY_FAIR_CALLERS, SPILLWAY_CALLER_QUOTA, the caller named
by SPILLWAY_TENANT_HEADER) and one worker whose drain rate is bounded and known: `CONCURRENCY`
slots running tasks that sleep `TASK_MS`, so at most 8 / 0.2 s = 40 tasks a second. Two
clients over HTTP, each retrying a refused task with the same ``Idempotency-Key`` after the
``Retry-After`` it was given:

- ``small`` sends one task every 100 ms;
- ``big`` has 100 times as many to send and sends them as fast as `BIG_LOOPS` connections go.

What must hold: ``small`` is never refused, and its tasks start within a round or so of their
accept, while ``big``'s wait behind its own quota; ``big`` is refused with ``429
caller-quota`` and a ``Retry-After`` within the bounds; every ``202`` ends ``succeeded``; and
once ``big`` is first refused, its requests (accepted or not) come no faster than the drain
rate measured over the same window, times `TOLERANCE`. Why 1.5: ``big``'s quota is full when
the window opens, so what it gets accepted in the window is at most what drained of it; its
refusals are at most one per connection per ``Retry-After`` (>= 1 s), 8 a second against a
drain of about 40 (+20 %); the rest is room for a drain measured on a noisy machine.

`bench/callers.py` runs the same surge longer and plots it (docs/callers-surge.png).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from tests.chaos.checker import Store, Verdict
from tests.chaos.conftest import StackFactory
from tests.chaos.harness import Stack
from tests.chaos.load import History, Op, _post, percentile
from tests.chaos.scenarios import conclude, finish, start

__all__ = ["BIG", "SMALL", "Plan", "Sample", "Surge", "surge"]

BIG, SMALL = "big", "small"
QUEUE = "default"
TENANT = "X-Tenant"
#: The API's and the worker's settings: callers take turns, and each may hold a fifth of a
#: lane's backlog limit waiting (100 tasks); the drain rate is sampled every 100 ms.
SETTINGS: dict[str, Any] = {
    "fair_callers": True,
    "caller_quota": 0.2,
    "backlog_limit": 500,
    "tenant_header": TENANT,
    "drain_sample_interval": 0.1,
    "drain_halflife": 0.5,
}
#: Big's requests (accepted or refused) after its first refusal, at most this times the drain
#: rate measured over the same window (the module's docstring says why).
TOLERANCE = 1.5
#: Small's p95 wait (accept -> start) is at most this share of big's median wait.
WAIT_SHARE = 0.25


@dataclass(frozen=True)
class Plan:
    """The sizes of one surge."""

    seconds: float
    small_every: float = 0.1
    ratio: int = 100  # big's tasks to send, per small's
    big_loops: int = 8  # big's connections, each sending its next task as soon as it may
    task_ms: int = 200
    concurrency: int = 8  # the one worker's slots

    @property
    def small_tasks(self) -> int:
        return round(self.seconds / self.small_every)

    @property
    def big_tasks(self) -> int:
        return self.ratio * self.small_tasks

    @property
    def drain_ceiling(self) -> float:
        """Tasks a second the worker can finish at most."""
        return self.concurrency * 1000 / self.task_ms


@dataclass(frozen=True, slots=True)
class Sample:
    """What the queue holds at `at` (wall clock)."""

    at: float
    backlog: int  # stream entries (waiting and running), delayed and held tasks
    waiting: dict[str, int]  # caller -> its held tasks (what its quota counts)


@dataclass
class Surge:
    """One surge's record: every request, the store after the drain, the queue's samples."""

    plan: Plan
    quota: int  # a caller's waiting tasks per shard lane
    retry_after: tuple[float, float]  # the settings' bounds
    history: History
    store: Store
    verdict: Verdict
    samples: list[Sample]
    began: float  # wall clock
    stopped: float  # when the clients were told to stop
    held_after: int  # tasks left in the held sets after the drain
    _ops: dict[str, list[Op]] = field(default_factory=dict)

    def ops(self, caller: str) -> list[Op]:
        """The caller's requests, in the order they were sent."""
        if caller not in self._ops:
            mine = [op for op in self.history.ops if op.key.startswith(caller[0])]
            self._ops[caller] = sorted(mine, key=lambda op: op.start)
        return self._ops[caller]

    def refusals(self, caller: str) -> list[Op]:
        return [op for op in self.ops(caller) if op.status == 429]

    def sent(self, caller: str) -> set[str]:
        return {k for k in self.history.keys if k.startswith(caller[0])}

    def accepted_ids(self, caller: str) -> list[str]:
        return [i for k, ids in self.history.accepted().items() if k[0] == caller[0] for i in ids]

    @property
    def first_refusal(self) -> float | None:
        return min((op.start for op in self.refusals(BIG)), default=None)

    @property
    def window(self) -> tuple[float, float]:
        """From big's first refusal to the stop (the whole surge if it was never refused)."""
        return (self.first_refusal or self.began), self.stopped

    def finished(self) -> list[float]:
        """When each task finished (Redis's clock, seconds), in order."""
        at = [
            int(r["finished_at"]) / 1000 for r in self.store.records.values() if "finished_at" in r
        ]
        return sorted(at)

    def drain_rate(self) -> float:
        """Tasks finished a second within the window."""
        low, high = self.window
        return sum(1 for t in self.finished() if low <= t < high) / max(high - low, 1e-9)

    def attempt_rate(self) -> float:
        """Big's requests a second within the window."""
        low, high = self.window
        return sum(1 for op in self.ops(BIG) if low <= op.start < high) / max(high - low, 1e-9)

    def waits(self, caller: str) -> list[float]:
        """Seconds from accept to start of each of the caller's tasks (Redis's clock)."""
        out = []
        for task_id in self.accepted_ids(caller):
            record = self.store.records.get(task_id, {})
            if "started_at" in record and "created_at" in record:
                out.append((int(record["started_at"]) - int(record["created_at"])) / 1000)
        return out

    def figures(self) -> dict[str, Any]:
        """The headline figures (verdict notes, the benchmark's summary)."""
        big_ra = [float(op.retry_after or 0) for op in self.refusals(BIG)]
        big_waits, small_waits = self.waits(BIG), self.waits(SMALL)
        low, high = self.window
        return {
            "surge_s": round(self.stopped - self.began, 1),
            "window_s": round(high - low, 1),
            "quota": self.quota,
            "small_sent": len(self.sent(SMALL)),
            "small_202": len(self.accepted_ids(SMALL)),
            "small_429": len(self.refusals(SMALL)),
            "big_offered": self.plan.big_tasks,
            "big_requests": len(self.ops(BIG)),
            "big_202": len(self.accepted_ids(BIG)),
            "big_429": len(self.refusals(BIG)),
            "retry_after_s": sorted(set(big_ra)),
            "retry_after_mean_s": round(sum(big_ra) / len(big_ra), 2) if big_ra else None,
            "drain_per_s": round(self.drain_rate(), 1),
            "big_attempts_per_s": round(self.attempt_rate(), 1),
            "big_attempts_per_drain": round(self.attempt_rate() / max(self.drain_rate(), 1e-9), 2),
            "small_wait_p50_ms": round(percentile(small_waits, 0.5) * 1000),
            "small_wait_p95_ms": round(percentile(small_waits, 0.95) * 1000),
            "small_wait_max_ms": round(max(small_waits, default=0) * 1000),
            "big_wait_p50_ms": round(percentile(big_waits, 0.5) * 1000),
            "big_wait_p95_ms": round(percentile(big_waits, 0.95) * 1000),
            "backlog_max": max((s.backlog for s in self.samples), default=0),
        }


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less if `stop` is set meanwhile."""
    if seconds > 0 and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


async def client(
    url: str,
    caller: str,
    count: int,
    history: History,
    stop: asyncio.Event,
    *,
    task_ms: int,
    loops: int = 1,
    every: float = 0.0,
) -> None:
    """Submit `count` tasks as `caller` over `loops` connections, task n not before
    ``n * every`` seconds from now; a task refused is sent again, with the same
    ``Idempotency-Key``, once its ``Retry-After`` (else 100 ms) has passed. Until `stop`."""
    keys: Iterator[tuple[int, str]] = enumerate(f"{caller[0]}{n}" for n in range(count))
    t0 = time.monotonic()
    limits = httpx.Limits(max_connections=loops, max_keepalive_connections=loops)

    async def loop(http: httpx.AsyncClient) -> None:
        for n, key in keys:  # shared by the loops: each takes the next task
            await pause(stop, t0 + n * every - time.monotonic())
            if stop.is_set():
                return
            history.keys.add(key)
            body = {"type": "work", "payload": {"key": key, "ms": task_ms}}
            headers = {TENANT: caller, "Idempotency-Key": key}
            while not stop.is_set():
                op = await _post(http, url, key, body, headers)
                history.ops.append(op)
                if op.status == 202:
                    break
                await pause(stop, float(op.retry_after) if op.retry_after else 0.1)

    async with httpx.AsyncClient(timeout=10.0, limits=limits) as http, asyncio.TaskGroup() as tg:
        for _ in range(loops):
            tg.create_task(loop(http))


async def sample(stack: Stack, samples: list[Sample], stop: asyncio.Event) -> None:
    """Every 250 ms until `stop`: the queue's backlog and each caller's held tasks."""
    redis = stack.redis_client
    shards = stack.spillway.broker.keys.all_shards()
    while not stop.is_set():
        at = time.time()
        backlog, waiting = 0, dict.fromkeys((BIG, SMALL), 0)
        for s in shards:
            backlog += int(await redis.xlen(s.stream(QUEUE)))
            backlog += int(await redis.zcard(s.due(QUEUE)))
            backlog += int(await redis.zcard(s.held(QUEUE)))
            now, *lasts = await redis.hmget(s.rounds(QUEUE), ["", BIG, SMALL])
            for caller, last in zip((BIG, SMALL), lasts, strict=True):
                waiting[caller] += max(0, int(last or 0) - int(now or 0))
        samples.append(Sample(at, backlog, waiting))
        await pause(stop, 0.25)


async def surge(
    stack: Stack, plan: Plan, *, size: str = "ci", drain_timeout: float = 120.0
) -> Surge:
    """Start `stack` (an API server and one worker), run the surge for `plan.seconds`, drain,
    and check the checker's invariants (`conclude`)."""
    run = await start(stack, apis=1, workers=1, concurrency=plan.concurrency)
    settings = stack.settings
    history, samples = History(), list[Sample]()
    stop, sampled = asyncio.Event(), asyncio.Event()
    began = time.time()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(sample(stack, samples, sampled))
        tg.create_task(
            client(run.urls[0], SMALL, plan.small_tasks, history, stop,
                   task_ms=plan.task_ms, every=plan.small_every)
        )  # fmt: skip
        tg.create_task(
            client(run.urls[0], BIG, plan.big_tasks, history, stop,
                   task_ms=plan.task_ms, loops=plan.big_loops)
        )  # fmt: skip
        await pause(stop, plan.seconds)
        stop.set()
        stopped = time.time()
        # The drain goes on being sampled: the figure shows the backlog going back to 0.
        verdict = Verdict("16 two callers' surge, caller quota", size)
        verdict, store = await conclude(verdict, stack, history, drain_timeout=drain_timeout)
        sampled.set()
    shards = stack.spillway.broker.keys.all_shards()
    held = sum([int(await stack.redis_client.zcard(s.held(QUEUE))) for s in shards])
    limit = settings.backlog_limit
    return Surge(
        plan=plan,
        quota=max(1, int(settings.caller_quota * limit)),
        retry_after=(settings.retry_after_min, settings.retry_after_max),
        history=history,
        store=store,
        verdict=verdict,
        samples=samples,
        began=began,
        stopped=stopped,
        held_after=held,
    )


def judge(result: Surge) -> Verdict:
    """The scenario's checks, on top of the checker's, recorded on the surge's verdict."""
    v = result.verdict
    figures = result.figures()
    v.notes.update(figures)
    v.faults = (
        f"{figures['big_offered']:,} big vs {figures['small_sent']:,} small, quota {result.quota}"
    )
    small_refused = [(op.status, op.problem) for op in result.ops(SMALL) if op.status != 202]
    v.check("small: no 429 (nor any refusal)", not small_refused, small_refused[:3])
    unsent = result.sent(SMALL) - set(result.history.accepted())
    v.check("small: every task sent was accepted", not unsent, sorted(unsent)[:3])
    refused = result.refusals(BIG)
    v.check("big: refused with 429", len(refused) > 0, len(refused))
    other = {op.problem for op in refused if not op.problem.endswith(":caller-quota")}
    v.check("big: every 429 is caller-quota", not other, other)
    low, high = result.retry_after
    out = [op.retry_after for op in refused if not low <= float(op.retry_after or 0) <= high]
    v.check(f"big: Retry-After within [{low:g}, {high:g}] s", not out, out[:5])
    ids = result.history.accepted_ids()
    failed = [i for i in ids if result.store.records.get(i, {}).get("status") != "succeeded"]
    v.check("every 202 succeeded", not failed, f"{len(failed)} of {len(ids)}: {failed[:3]}")
    v.check("held sets empty after the drain", result.held_after == 0, result.held_after)
    small_p95, big_p50 = figures["small_wait_p95_ms"], figures["big_wait_p50_ms"]
    v.check(
        f"small's p95 wait <= {WAIT_SHARE:g} x big's median",
        small_p95 <= WAIT_SHARE * big_p50,
        f"{small_p95} ms vs {big_p50} ms",
    )
    rate, drain = figures["big_attempts_per_s"], figures["drain_per_s"]
    v.check(
        f"big's requests after its first refusal <= {TOLERANCE:g} x the drain rate",
        drain > 0 and rate <= TOLERANCE * drain,
        f"{rate}/s vs {drain}/s",
    )
    return v


@pytest.mark.chaos
@pytest.mark.timeout(300)
async def test_a_big_callers_surge_is_paced_and_the_small_caller_is_unaffected(
    stacks: StackFactory, redis_url: str
) -> None:
    stack = stacks(settings=SETTINGS, redis_url=redis_url)
    result = await surge(stack, Plan(seconds=12.0), drain_timeout=60.0)
    finish(judge(result))
