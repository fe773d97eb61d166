"""One worker process: read deliveries, run handlers with bounded concurrency, store outcomes.

Four loops share one asyncio event loop:

* the reader asks Redis for new entries (XREADGROUP) while slots are free;
* each run is its own asyncio task, under the task's timeout (sync handlers in a thread pool);
* the finisher writes outcomes in batches (one pipeline of finish scripts per batch);
* the keeper promotes due tasks, reclaims stalled deliveries and beats the heartbeat, and
  learns which queues are paused (in the round trip of its due-task check, every 0.1 s);
* the renewer keeps this worker's claims fresh, on its own timer, so a slow chore of the
  keeper can never let a live task's claim lapse; its answer also names the running tasks
  whose cancellation was requested, and those runs are stopped.

A slot is freed only once its outcome is stored, so "in flight" always means "not yet safe".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import secrets
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from spillway import metrics
from spillway.app import Spillway
from spillway.broker import Delivery, Outcome, Started
from spillway.deliverer import Deliverer
from spillway.errors import BrokerUnavailable, SpillwayError
from spillway.execution import execute, unexpected
from spillway.lanes import lanes_of, parse_lane
from spillway.limits import TypeLimits
from spillway.records import WorkerInfo
from spillway.scheduler import Scheduler
from spillway.tasks import CancelSignal

__all__ = ["Worker"]

log = logging.getLogger("spillway.worker")

_PROMOTE_INTERVAL = 0.1
# How long a reader of a limited type waits, at most, before it asks for a slot again when
# every slot is held elsewhere (its own frees wake it at once), and between reads of its lanes
# when they are empty: it cannot block on them while holding slots nobody may use meanwhile.
_LIMIT_POLL = (0.01, 0.2)
# The order a reader takes a queue's lanes in, by read (indexes into high, default, low): the
# highest first, but one read in ten starts with `default` and one with `low`, so while higher
# levels are busy each lower one still gets at least a tenth of the reads (docs/limits.md).
_ORDERS = [(0, 1, 2)] * 4 + [(1, 0, 2)] + [(0, 1, 2)] * 4 + [(2, 1, 0)]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one reader reads in each shard: a queue's lanes, or a limited type's (then
    with its limits), highest priority first."""

    queue: str
    lanes: tuple[str, ...]
    task_type: str | None = None
    limits: TypeLimits | None = None


def _plans(app: Spillway, queues: Sequence[str]) -> list[_Plan]:
    plans = []
    for queue in queues:
        plans.append(_Plan(queue, tuple(lanes_of(queue))))
        for task in sorted(app.tasks.values(), key=lambda t: t.name):
            if task.queue == queue and task.limits is not None:
                plans.append(
                    _Plan(queue, tuple(lanes_of(queue, task.name)), task.name, task.limits)
                )
    return plans


class Worker:
    """Runs the tasks of `app` from `queues` (default: every queue the app declares)."""

    def __init__(
        self,
        app: Spillway,
        *,
        concurrency: int | None = None,
        queues: list[str] | None = None,
        burst: bool = False,
        name: str | None = None,
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.concurrency = concurrency or self.settings.concurrency
        self.queues = queues or app.queues
        self._plans = _plans(app, self.queues)
        #: Every lane (stream) this worker reads, of its queues and their limited types.
        self.lanes = [lane for plan in self._plans for lane in plan.lanes]
        self._plan_of = {lane: plan for plan in self._plans for lane in plan.lanes}
        self.burst = burst
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.processed = 0
        self.started_at = datetime.now(UTC)
        # Keyed by the delivery: entry ids are unique per stream only, and shards are streams.
        self._inflight: dict[Delivery, asyncio.Task[None] | None] = {}
        self._signals: dict[Delivery, CancelSignal] = {}  # of the runs started, to cancel them
        self._reserved = 0
        self._readers_waiting = 0
        self._busy_waiting = 0  # waiting readers whose stream had entries at their last read
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self._executor: ThreadPoolExecutor | None = None
        # The loop `run` runs in (set there), for the hot paths: spillway.loops.
        self._loop: asyncio.AbstractEventLoop
        self._drained = False
        # The slot each delivery of a type with a concurrency limit holds: (type, token).
        self._slots: dict[Delivery, tuple[str, str]] = {}
        self._slot_came_free = {p.task_type: asyncio.Event() for p in self._plans if p.task_type}
        # The queues an operator paused, as of the keeper's last due-task check; readers of a
        # paused queue wait on `_pauses_changed` (set, then replaced, at every change).
        self._paused: frozenset[str] = frozenset()
        self._pauses_changed = asyncio.Event()
        self._malformed_pauses = 0
        # The schedules of its queues, checked by the keeper (not in burst mode: a burst
        # drains what is there and ends).
        mine = [s for s in app.schedules.values() if app.resolve(s.task).queue in self.queues]
        self._scheduler = Scheduler(app, [] if burst else mine)
        self._deliverer = Deliverer(app, self.name)

    @property
    def paused(self) -> frozenset[str]:
        """The queues this worker sees paused (as of its last due-task check)."""
        return self._paused

    # --- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading; in-flight tasks get `shutdown_grace` seconds to finish."""
        if not self._stopping.is_set():
            log.info("worker %s stopping", self.name)
            self._stopping.set()
            self._slot_freed.set()

    async def run(self) -> None:
        """Run until stopped (SIGTERM/SIGINT, `stop()`), or until drained in burst mode."""
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        await self._connect()
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="spillway-task")
        log.info(
            "worker %s consuming %s with concurrency %d%s",
            self.name, ",".join(self.queues), self.concurrency, " (burst)" if self.burst else "",
        )  # fmt: skip
        finisher = self._helper("finisher", self._finish_loop)
        keeper = self._helper("keeper", self._keep_loop)
        renewer = self._helper("renewer", self._renew_loop)
        # Webhooks beside the readers, never in a task's slot (spillway.deliverer).
        delivering = self._helper("webhooks", lambda: self._deliverer.run(self._stopping))
        try:
            # One reader per shard and queue (and limited type): on a cluster a read cannot
            # span slots, and separate readers let a busy shard's work flow while another is
            # empty. A reader takes its lanes in priority order.
            async with asyncio.TaskGroup() as readers:
                for shard in self.app.broker.core.keys.all_shards():
                    for plan in self._plans:
                        lanes = {shard.stream(lane): (lane, shard.shard) for lane in plan.lanes}
                        name = f"read-{shard.shard}-{plan.lanes[1]}"
                        reader = functools.partial(self._read_loop, lanes, plan)
                        readers.create_task(self._restarting(name, reader), name=name)
        finally:
            await self._shutdown(finisher, keeper, renewer, delivering)
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _connect(self) -> None:
        delay = 0.1
        while True:
            try:
                await self.app.connect()
                await self.app.broker.core.register_queues(self.lanes)
                # Before any reader starts: a queue paused now is not read even once.
                self._set_paused(await self.app.broker.pauses.paused())
            except BrokerUnavailable as exc:
                if self._stopping.is_set():
                    raise
                log.warning("waiting for Redis: %s", exc)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                await self._heartbeat()
            except BrokerUnavailable as exc:  # e.g. a full Redis: run anyway, and make room
                log.warning("heartbeat refused: %s", exc)
            return

    async def _shutdown(
        self,
        finisher: asyncio.Task[None],
        keeper: asyncio.Task[None],
        renewer: asyncio.Task[None],
        delivering: asyncio.Task[None],
    ) -> None:
        self._stopping.set()
        keeper.cancel()
        runs = [t for t in self._inflight.values() if t is not None]
        if runs:
            log.info(
                "waiting up to %gs for %d running tasks", self.settings.shutdown_grace, len(runs)
            )
            _, unfinished = await asyncio.wait(runs, timeout=self.settings.shutdown_grace)
            for t in unfinished:
                t.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        # Let the finisher store what did finish, then hand back what did not.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.redis_timeout * 10):
                await self._outcomes.join()
        finisher.cancel()
        renewer.cancel()  # only now: tasks finishing during the grace period keep their claims
        # The deliverer ends after the round it is in (it sees `_stopping`): cancelled mid-round,
        # its claims would wait out their lease and a burst's last round would find nothing.
        # Bounded: a delivery cut short is tried again by any worker once its lease runs out.
        _, late = await asyncio.wait([delivering], timeout=self.settings.callback_timeout + 1)
        if late:
            delivering.cancel()
        if self.burst:
            # What the tasks just run made due: a burst worker delivers it once before leaving.
            with contextlib.suppress(SpillwayError, TimeoutError):
                async with asyncio.timeout(self.settings.callback_timeout + 1):
                    await self._deliverer.round()
            await self._deliverer.close()
        helpers = [finisher, keeper, renewer, delivering]
        _, stuck = await asyncio.wait(helpers, timeout=self.settings.redis_timeout * 2)
        if stuck:  # never hang a shutdown on a helper that ignored its cancellation
            log.warning("stopping without %s", ", ".join(t.get_name() for t in stuck))
        await asyncio.gather(*(t for t in helpers if t not in stuck), return_exceptions=True)
        leftover = list(self._inflight)
        with contextlib.suppress(SpillwayError):
            if leftover:
                released = await self.app.broker.work.release(self.name, leftover)
                log.info("released %d unfinished deliveries for other workers", released)
            await self._free_slots(leftover)
            await self.app.broker.work.deregister(self.name)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped after %d tasks", self.name, self.processed)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    # --- reading and starting ----------------------------------------------------------------

    def _free(self) -> int:
        return self.concurrency - len(self._inflight) - self._reserved

    def _helper(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """One of the worker's long-lived loops beside the readers, restarted like them, and
        also after an error it did not expect (logged): a plain task ends silently."""
        return asyncio.create_task(
            self._restarting(name, loop, errors=True), name=f"spillway-{name}"
        )

    async def _restarting(
        self, name: str, loop: Callable[[], Awaitable[None]], *, errors: bool = False
    ) -> None:
        """`loop`, restarted if a cancellation nobody asked for ends it (and, with `errors`,
        if an exception does).

        A stray CancelledError out of a Redis call (none was requested: `cancelling()` is 0)
        ends a task as if it had been asked to stop, and a TaskGroup (or a plain task) drops
        it without a word. It left a shard's lanes unread in a slot-move test, and a worker
        with no finisher in chaos scenario 14 (its runs' outcomes never stored, their claims
        renewed for ever: docs/reliability.md finding 22). A cancellation that was asked for
        (shutdown, a sibling's failure) still ends the loop.
        """
        task = asyncio.current_task()
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                if self._stopping.is_set() or task is None or task.cancelling():
                    raise
                log.warning("%s: a stray cancellation ended it; restarted", name)
            except Exception:
                if not errors:
                    raise
                log.exception("%s failed; restarted", name)
            await self._sleep(0.1)

    async def _read_loop(self, lanes: dict[str, tuple[str, int]], plan: _Plan) -> None:
        """Read one shard's lanes of a queue (or of a limited type) while slots are free.

        Slots are reserved before a read so deliveries do not exceed the concurrency (but for
        the moment noted below). Four rules keep readers from starving each other: a reader
        whose lanes were empty reserves a single slot for its (blocking) wait on all of them, so
        idle shards do not hold capacity a busy one could use; an idle reader waits while a
        busy one is waiting for slots; a reader takes only its share of the free slots while
        other readers are waiting too; and after an empty read a reader lets the readers
        waiting for a slot go first, so every stream is read in turn even when the streams
        outnumber the slots. A limited type's reader
        first takes its type's slots and start tokens (`_read_limited`).
        """
        broker = self.app.broker
        block_ms = min(self.settings.block_ms, 100) if self.burst else self.settings.block_ms
        linger = self.settings.read_linger
        loop = asyncio.get_running_loop()
        backoff = 0.1
        idle = False
        reads = 0
        while not self._stopping.is_set():
            if plan.queue in self._paused:
                if self.burst and await self._drained_now():
                    self._end_burst()
                    return
                await self._wait_for_resume(block_ms / 1000)
                idle = False
                continue
            free = self._free()
            # An idle reader lets readers that have work waiting take free slots first.
            if free <= 0 or (idle and self._busy_waiting > 0):
                self._readers_waiting += 1
                self._busy_waiting += not idle
                self._slot_freed.clear()
                try:
                    await self._slot_freed.wait()
                finally:
                    self._readers_waiting -= 1
                    self._busy_waiting -= not idle
                continue
            share = -(-free // (1 + self._readers_waiting))
            count = min(share, self.settings.batch_size)
            # Idle: a blocking read of one entry per lane, for which it reserves ONE slot: a
            # slot per lane let one idle reader hold three slots for its wait, and with a few
            # slots and several shards the readers of a shard that got work could not read it
            # (seen on a cluster: tasks unstarted for 20 s). Entries landing in two lanes
            # during one wait are delivered together: at most one more per lane, for a moment.
            waiting_on = lanes if idle else {}
            reserved = 1 if idle else count
            self._reserved += reserved
            read_at = loop.time()
            taken: list[tuple[Delivery, Started | None]] | None = None
            try:
                if plan.task_type is not None and plan.limits is not None:
                    taken = await self._read_limited(
                        lanes, plan.task_type, plan.limits, count, reads
                    )
                    if taken is None:
                        continue  # no slot free: it waited for one, now it asks again
                    deliveries = [d for d, _ in taken]
                elif idle:
                    deliveries = await broker.work.read(self.name, waiting_on, 1, block_ms)
                else:
                    # Read and begun in one round trip (take.lua).
                    ordered = dict(list(lanes.items())[i] for i in _ORDERS[reads % 10])
                    taken = await broker.work.take(self.name, ordered, count)
                    deliveries = [d for d, _ in taken]
                reads += 1
                backoff = 0.1
            except BrokerUnavailable as exc:
                log.warning("read failed: %s", exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            finally:
                self._reserved -= reserved
                self._slot_freed.set()  # other readers may be waiting for these slots
            # A limited reader never blocks (see _read_limited): it is never idle. An idle wait
            # that ended empty is followed by a read in order, which starts held tasks (held
            # tasks add no entry for a blocked read to wake on: docs/architecture.md#callers).
            idle = not deliveries and plan.limits is None and not idle
            if deliveries:
                if taken is not None:
                    await self._started(taken)
                    if self._readers_waiting:
                        # The readers this read's freed reservation woke go first: they wait
                        # again ahead of this one, so readers take the freed slots in turn.
                        # (A begin's round trip used to give them that turn; a take has none.)
                        await asyncio.sleep(0)
                else:
                    await self._start(deliveries, fresh=True)
                if 1 < len(deliveries) < count and linger:
                    # Under load (more than one task, less than a batch), a read at most every
                    # `read_linger`: what arrives meanwhile is read and begun in one round trip
                    # and (mostly) stored in one, not one per few tasks (docs/benchmarks.md, "CPU
                    # budget per task"). A lone task (a quiet spell, a chain of tasks each
                    # enqueuing the next) is read at once.
                    wait = read_at + linger - loop.time()
                    if wait > 0:
                        await self._sleep(wait)
            elif self.burst and await self._drained_now():
                self._end_burst()
                return
            elif plan.task_type is not None:
                await self._wait_for_slot(plan.task_type, _LIMIT_POLL[1])
            elif self._readers_waiting:
                # An empty read ends this reader's turn: readers woken for the slot it freed
                # go first. Without this, with fewer slots than shard streams, readers of
                # empty streams took the slots back at once and a full stream was never read.
                await asyncio.sleep(0)

    def _end_burst(self) -> None:
        if not self._stopping.is_set():
            log.info("burst: queues drained")
        self._stopping.set()
        self._slot_freed.set()

    def _set_paused(self, paused: frozenset[str], malformed: int = 0) -> None:
        """Take the paused queues the keeper read; wake the readers if they changed."""
        if malformed != self._malformed_pauses:
            self._malformed_pauses = malformed
            if malformed:  # once per change, not at every check
                log.warning("%d member(s) of the paused set are not queue names: ignored",
                            malformed)  # fmt: skip
        if paused == self._paused:
            return
        for queue in sorted(paused - self._paused):
            log.info("queue %s paused: starting none of its tasks", queue)
        for queue in sorted(self._paused - paused):
            log.info("queue %s resumed", queue)
        self._paused = paused
        changed, self._pauses_changed = self._pauses_changed, asyncio.Event()
        changed.set()

    async def _wait_for_resume(self, seconds: float) -> None:
        """Wait until the paused queues change, the worker stops, or `seconds` pass."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (self._stopping, self._pauses_changed)]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _read_limited(
        self,
        lanes: dict[str, tuple[str, int]],
        task_type: str,
        type_limits: TypeLimits,
        count: int,
        reads: int,
    ) -> list[tuple[Delivery, Started | None]] | None:
        """Read a limited type's lanes: take up to `count` slots and start tokens across every
        worker first, take (read and begin) at most that many entries, give back what the read
        did not use; None when no slot was free (after waiting for one a while).

        When every slot is held (or the rate allows no start yet) nothing is read: the tasks
        wait in their stream, in order, neither attempted nor in anyone's way, until a slot
        frees (this worker's own frees wake the reader at once; others' are seen when it asks
        again) or the rate allows the next start. It never blocks on its lanes, so it never
        holds a slot while waiting for work: an empty read gives its slots back.
        """
        limits = self.app.broker.limits
        grant = await limits.take(task_type, type_limits, count)
        if not grant.count:
            wait = grant.retry_after or _LIMIT_POLL[1]
            await self._wait_for_slot(task_type, max(_LIMIT_POLL[0], wait))
            return None
        ordered = dict(list(lanes.items())[i] for i in _ORDERS[reads % 10])
        try:
            taken = await self.app.broker.work.take(self.name, ordered, grant.count)
        except BaseException:
            with contextlib.suppress(SpillwayError):
                await limits.give(task_type, type_limits, grant.tokens, grant.count)
            raise
        for (d, _), token in zip(taken, grant.tokens, strict=False):
            self._slots[d] = (task_type, token)
        unused = grant.count - len(taken)
        if unused:
            with contextlib.suppress(SpillwayError):
                await limits.give(task_type, type_limits, grant.tokens[len(taken) :], unused)
        return taken

    async def _wait_for_slot(self, task_type: str, seconds: float) -> None:
        """Wait until this worker frees a slot of `task_type`, it stops, or `seconds` pass."""
        came_free = self._slot_came_free[task_type]
        came_free.clear()
        waiters = [asyncio.ensure_future(e.wait()) for e in (self._stopping, came_free)]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _free_slots(self, deliveries: Sequence[Delivery]) -> None:
        """Give back the limited-type slots these deliveries held (their runs are over)."""
        by_type: dict[str, list[str]] = {}
        for d in deliveries:
            held = self._slots.pop(d, None)
            if held is not None:
                by_type.setdefault(held[0], []).append(held[1])
        for task_type, tokens in by_type.items():
            limits = self.app.tasks[task_type].limits
            try:
                if limits is not None:
                    await self.app.broker.limits.give(task_type, limits, tokens)
            except BrokerUnavailable as exc:  # the leases expire by themselves
                log.warning("freeing %d slots of %s failed: %s", len(tokens), task_type, exc)
            self._slot_came_free[task_type].set()

    async def _drained_now(self) -> bool:
        # Reservations of other readers do not count: any entry they could still receive is
        # in a stream, so the backlog (which counts delivered-but-unfinished entries) shows it.
        if self._inflight:
            return False
        # A paused queue's tasks wait for its resume, not for this worker.
        lanes = [lane for lane in self.lanes if parse_lane(lane).queue not in self._paused]
        try:
            return await self.app.broker.work.backlog(lanes) == 0
        except BrokerUnavailable:
            return False

    async def _start(self, deliveries: list[Delivery], fresh: bool = False) -> None:
        """Begin `deliveries` (`fresh`: just read as new, see `WorkerOps.begin`) and run each
        that begins."""
        if self._stopping.is_set():
            with contextlib.suppress(SpillwayError):
                await self.app.broker.work.release(self.name, deliveries)
            return
        for d in deliveries:  # hold the slots while begin runs, so renewal covers them
            self._inflight[d] = None
        task = asyncio.current_task()
        while True:
            try:
                started = await self.app.broker.work.begin(deliveries, fresh)
                break
            except BrokerUnavailable as exc:
                if self._stopping.is_set():
                    return  # left in _inflight: released at shutdown
                log.warning("begin failed, retrying: %s", exc)
            except asyncio.CancelledError:
                # Asked for (shutdown): left in _inflight, released at shutdown. A stray one
                # (finding 22) would leave these deliveries held and never run: begin again
                # (a delivery begun twice runs once).
                if self._stopping.is_set() or task is None or task.cancelling():
                    raise
                log.warning("begin: a stray cancellation; retrying")
            await self._sleep(0.2)
        await self._launch(deliveries, started)

    async def _started(self, taken: list[tuple[Delivery, Started | None]]) -> None:
        """Run what a take read and began (`WorkerOps.take`); at shutdown, hand it back."""
        deliveries = [d for d, _ in taken]
        if self._stopping.is_set():
            # Begun but not run: reclaimable at once, like a delivery read but not begun.
            with contextlib.suppress(SpillwayError):
                await self.app.broker.work.release(self.name, deliveries)
            await self._free_slots(deliveries)
            return
        for d in deliveries:
            self._inflight[d] = None
        await self._launch(deliveries, [s for _, s in taken])

    async def _launch(self, deliveries: list[Delivery], started: list[Started | None]) -> None:
        """Run each begun delivery (held in `_inflight`); free the slots of the others."""
        skipped = [d for d, s in zip(deliveries, started, strict=True) if s is None]
        await self._free_slots(skipped)
        by_type: Counter[str] = Counter()
        for d, s in zip(deliveries, started, strict=True):
            if s is None:
                self._release_slot(d)
            else:
                by_type[s.type] += 1
                cancel = self._signals[d] = CancelSignal()
                # The loop's own create_task: asyncio's asks for the loop (spillway.loops).
                run = self._loop.create_task(
                    self._run(s, cancel), name=f"spillway-task-{d.task_id}"
                )
                self._inflight[d] = run
        for task_type, count in by_type.items():  # counted per batch, not per run
            metrics.tasks_started(task_type, count)

    def _release_slot(self, d: Delivery) -> None:
        self._inflight.pop(d, None)
        self._signals.pop(d, None)
        self._slot_freed.set()

    async def _run(self, s: Started, cancel: CancelSignal) -> None:
        started = metrics.run_started(s.type, s.attempts, s.created_at_ms)
        task = self.app.tasks.get(s.type)
        run = execute(task, s, self._executor, cancel, self._loop)
        tracing = self.app.tracing
        try:
            outcome = await (tracing.process(s, run) if tracing.enabled else run)
        except Exception as exc:
            # A bug of ours between the handler and its outcome: every run must end in an
            # outcome, or its delivery stays held here, renewed, and the task never ends.
            log.exception(
                "task %s (%s): its run ended without an outcome", s.delivery.task_id, s.type
            )
            outcome = unexpected(s, task, exc)
        metrics.run_ended(s.type, started)
        self._outcomes.put_nowait(outcome)

    # --- finishing ---------------------------------------------------------------------------

    async def _finish_loop(self) -> None:
        while True:
            batch = [await self._outcomes.get()]
            while not self._outcomes.empty() and len(batch) < 1000:
                batch.append(self._outcomes.get_nowait())
            backoff = 0.05
            task = asyncio.current_task()
            while True:
                # Whatever ends a try, the batch is kept and tried again (storing an outcome
                # twice writes it once): dropped, its runs would stay claimed for ever.
                try:
                    await self.app.broker.work.finish(batch)
                    break
                except BrokerUnavailable as exc:
                    log.warning("storing %d outcomes failed, retrying: %s", len(batch), exc)
                except asyncio.CancelledError:
                    if task is None or task.cancelling():
                        raise  # the shutdown
                    log.warning("storing %d outcomes: a stray cancellation; retrying", len(batch))
                except Exception:
                    log.exception("storing %d outcomes failed, retrying", len(batch))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            await self._free_slots([o.delivery for o in batch])
            for (task_type, kind), count in Counter((o.type, o.kind) for o in batch).items():
                metrics.task_finished(task_type, kind, count)  # per batch, not per run
            self.processed += len(batch)
            for o in batch:
                self._release_slot(o.delivery)
                self._outcomes.task_done()

    # --- keeping: due tasks, reclaims, claim renewal, heartbeat ------------------------------

    async def _keep_loop(self) -> None:
        s = self.settings
        every = {  # seconds between runs of each chore
            "reclaim": min(1.0, s.visibility_timeout / 4),
            "beat": s.heartbeat_interval,
            "prune": 60.0,
            "schedule": 1.0,
        }
        last = dict.fromkeys(every, time.monotonic())
        last["schedule"] = -every["schedule"]  # the first check at once: a tick may be due
        cursors: dict[tuple[str, int], str] = {}
        while not self._stopping.is_set():
            now = time.monotonic()
            try:
                # Due tasks are checked often so delays and retry backoffs stay accurate.
                due = await self.app.broker.work.promote_due(self.lanes)
                self._set_paused(due.paused, due.malformed)
                if now - last["reclaim"] >= every["reclaim"]:
                    await self._reclaim(cursors)
                    last["reclaim"] = now
                if now - last["beat"] >= every["beat"]:
                    await self._heartbeat()
                    last["beat"] = now
                if now - last["prune"] >= every["prune"]:
                    idle_ms = int(max(600.0, s.visibility_timeout * 10) * 1000)
                    await self.app.broker.work.prune_consumers(self.lanes, idle_ms)
                    last["prune"] = now
                if now - last["schedule"] >= every["schedule"]:
                    last["schedule"] = now
                    await self._check_schedules()
            except BrokerUnavailable as exc:
                log.warning("maintenance failed: %s", exc)
            await self._sleep(_PROMOTE_INTERVAL)

    async def _check_schedules(self) -> None:
        """Enqueue due ticks; a failure is logged, never the end of the keeper (which also
        reclaims, beats and promotes: a schedule's bug must not stop those)."""
        try:
            await self._scheduler.check()
        except BrokerUnavailable:
            raise
        except Exception:
            log.exception("checking the schedules failed; trying again in a second")

    async def _reclaim(self, cursors: dict[tuple[str, int], str]) -> None:
        broker = self.app.broker
        min_idle = int(self.settings.visibility_timeout * 1000)
        for queue, shard in broker.core.streams(self.lanes).values():
            free = min(self._free(), self.settings.batch_size)
            if free <= 0 or self._stopping.is_set():
                return
            if parse_lane(queue).queue in self._paused:
                continue  # a dead worker's deliveries start again once the queue resumes
            plan = self._plan_of[queue]
            grant = None
            if plan.task_type is not None and plan.limits is not None:
                # A dead worker's deliveries of a limited type need slots like new ones.
                grant = await broker.limits.take(plan.task_type, plan.limits, free)
                if not grant.count:
                    continue
                free = grant.count
            self._reserved += free
            try:
                cursor = cursors.get((queue, shard), "0-0")
                cursor, claimed = await broker.work.reclaim(
                    self.name, queue, shard, min_idle, free, cursor
                )
                cursors[(queue, shard)] = cursor
            finally:
                self._reserved -= free
                self._slot_freed.set()  # the reader may be waiting for these slots
            # XAUTOCLAIM also hands back this worker's own deliveries when their renewal came
            # late; they are still running here, so they must not start a second time.
            claimed = [d for d in claimed if d not in self._inflight]
            if grant is not None and plan.task_type is not None and plan.limits is not None:
                for d, token in zip(claimed, grant.tokens, strict=False):
                    self._slots[d] = (plan.task_type, token)
                unused = grant.count - len(claimed)
                if unused:
                    await broker.limits.give(
                        plan.task_type, plan.limits, grant.tokens[len(claimed) :], unused
                    )
            if claimed:
                log.warning(
                    "reclaimed %d stalled deliveries from %s/%d", len(claimed), queue, shard
                )
                await self._start(claimed)

    async def _renew_loop(self) -> None:
        # Three renewals per visibility timeout: one may fail or be late and the claim holds.
        # It runs until cancelled, through the shutdown grace period too.
        task = asyncio.current_task()
        while True:
            await asyncio.sleep(self.settings.visibility_timeout / 3)
            try:
                await self._renew()
            except BrokerUnavailable as exc:
                log.warning("claim renewal failed: %s", exc)
            if task is not None and task.cancelling():
                # Cancelled during the Redis call, and the cancellation was swallowed below
                # us (docs/benchmarks.md#renewal-during-shutdown): stop all the same, or the
                # shutdown waits for this loop forever.
                return

    async def _renew(self) -> None:
        mine = list(self._inflight)
        if mine:
            _, marked = await self.app.broker.work.renew(self.name, mine)
            for d in marked:
                # A delivery still being begun has no signal yet: the next renewal stops it.
                cancel = self._signals.get(d)
                if cancel is not None and cancel.request():
                    log.info("task %s: cancel requested, stopping its run", d.task_id)
        by_type: dict[str, list[str]] = {}
        for task_type, token in self._slots.values():
            by_type.setdefault(task_type, []).append(token)
        for task_type, tokens in by_type.items():
            await self.app.broker.limits.keep(task_type, tokens)

    async def _heartbeat(self) -> None:
        await self.app.broker.work.heartbeat(
            WorkerInfo(
                name=self.name,
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=self.queues,
                concurrency=self.concurrency,
                in_flight=len(self._inflight),
                processed=self.processed,
                started_at=self.started_at,
                last_seen=None,
            )
        )


def run_worker(app: Spillway, **kwargs: Any) -> None:
    """Run one worker in this process (uvloop when installed) until it stops."""
    # Move the objects of the imports and the app out of the collector's reach: a full
    # collection walking them pauses every running task (docs/benchmarks.md#frozen-collector).
    gc.collect()
    gc.freeze()

    async def main() -> None:
        try:
            await Worker(app, **kwargs).run()
        finally:
            await app.close()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed everywhere but Windows
        asyncio.run(main())
    else:
        uvloop.run(main())
