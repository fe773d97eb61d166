"""One worker process: read deliveries, run handlers with bounded concurrency, store outcomes.

Four loops share one asyncio event loop:

* the reader asks Redis for new entries (XREADGROUP) while slots are free;
* each run is its own asyncio task, under the task's timeout (sync handlers in a thread pool);
* the finisher writes outcomes in batches (one pipeline of finish scripts per batch);
* the keeper promotes due tasks, reclaims stalled deliveries and beats the heartbeat;
* the renewer keeps this worker's claims fresh, on its own timer, so a slow chore of the
  keeper can never let a live task's claim lapse.

A slot is freed only once its outcome is stored, so "in flight" always means "not yet safe".
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from spillway import metrics
from spillway.app import Spillway
from spillway.broker import Delivery, Outcome, Started
from spillway.errors import BrokerUnavailable, SpillwayError
from spillway.execution import execute
from spillway.records import WorkerInfo

__all__ = ["Worker"]

log = logging.getLogger("spillway.worker")

_PROMOTE_INTERVAL = 0.1


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
        self.burst = burst
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.processed = 0
        self.started_at = datetime.now(UTC)
        # Keyed by the delivery: entry ids are unique per stream only, and shards are streams.
        self._inflight: dict[Delivery, asyncio.Task[None] | None] = {}
        self._reserved = 0
        self._readers_waiting = 0
        self._busy_waiting = 0  # waiting readers whose stream had entries at their last read
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self._executor: ThreadPoolExecutor | None = None
        self._drained = False

    # --- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading; in-flight tasks get `shutdown_grace` seconds to finish."""
        if not self._stopping.is_set():
            log.info("worker %s stopping", self.name)
            self._stopping.set()
            self._slot_freed.set()

    async def run(self) -> None:
        """Run until stopped (SIGTERM/SIGINT, `stop()`), or until drained in burst mode."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        await self._connect()
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="spillway-task")
        log.info(
            "worker %s consuming %s with concurrency %d%s",
            self.name, ",".join(self.queues), self.concurrency, " (burst)" if self.burst else "",
        )  # fmt: skip
        finisher = asyncio.create_task(self._finish_loop(), name="spillway-finisher")
        keeper = asyncio.create_task(self._keep_loop(), name="spillway-keeper")
        renewer = asyncio.create_task(self._renew_loop(), name="spillway-renewer")
        try:
            # One reader per shard stream: on a cluster a stream read cannot span slots, and
            # separate readers let a busy shard's work flow while another is empty.
            streams = self.app.broker.core.streams(self.queues)
            async with asyncio.TaskGroup() as readers:
                for stream, where in streams.items():
                    readers.create_task(self._read_loop({stream: where}), name=f"read-{stream}")
        finally:
            await self._shutdown(finisher, keeper, renewer)
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _connect(self) -> None:
        delay = 0.1
        while True:
            try:
                await self.app.connect()
                await self.app.broker.core.register_queues(self.queues)
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
        self, finisher: asyncio.Task[None], keeper: asyncio.Task[None], renewer: asyncio.Task[None]
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
        helpers = [finisher, keeper, renewer]
        _, stuck = await asyncio.wait(helpers, timeout=self.settings.redis_timeout * 2)
        if stuck:  # never hang a shutdown on a helper that ignored its cancellation
            log.warning("stopping without %s", ", ".join(t.get_name() for t in stuck))
        await asyncio.gather(*(t for t in helpers if t not in stuck), return_exceptions=True)
        leftover = list(self._inflight)
        with contextlib.suppress(SpillwayError):
            if leftover:
                released = await self.app.broker.work.release(self.name, leftover)
                log.info("released %d unfinished deliveries for other workers", released)
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

    async def _read_loop(self, stream: dict[str, tuple[str, int]]) -> None:
        """Read one shard stream while slots are free.

        Slots are reserved before a read so deliveries never exceed the concurrency. Four
        rules keep shards from starving each other: a reader whose stream was empty reserves a
        single slot for its (blocking) wait, so idle shards do not hold capacity a busy one
        could use; an idle reader waits while a busy one is waiting for slots; a reader
        takes only its share of the free slots while other readers are waiting too; and after
        an empty read a reader lets the readers waiting for a slot go first, so every stream
        is read in turn even when the streams outnumber the slots.
        """
        broker = self.app.broker
        block_ms = min(self.settings.block_ms, 100) if self.burst else self.settings.block_ms
        backoff = 0.1
        idle = False
        while not self._stopping.is_set():
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
            count = 1 if idle else min(share, self.settings.batch_size)
            self._reserved += count
            try:
                deliveries = await broker.work.read(self.name, stream, count, block_ms)
                backoff = 0.1
            except BrokerUnavailable as exc:
                log.warning("read failed: %s", exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            finally:
                self._reserved -= count
                self._slot_freed.set()  # other readers may be waiting for these slots
            idle = not deliveries
            if deliveries:
                await self._start(deliveries)
            elif self.burst and await self._drained_now():
                if not self._stopping.is_set():
                    log.info("burst: queues drained")
                self._stopping.set()
                self._slot_freed.set()
                return
            elif self._readers_waiting:
                # An empty read ends this reader's turn: readers woken for the slot it freed
                # go first. Without this, with fewer slots than shard streams, readers of
                # empty streams took the slots back at once and a full stream was never read.
                await asyncio.sleep(0)

    async def _drained_now(self) -> bool:
        # Reservations of other readers do not count: any entry they could still receive is
        # in a stream, so the backlog (which counts delivered-but-unfinished entries) shows it.
        if self._inflight:
            return False
        try:
            return await self.app.broker.work.backlog(self.queues) == 0
        except BrokerUnavailable:
            return False

    async def _start(self, deliveries: list[Delivery]) -> None:
        if self._stopping.is_set():
            with contextlib.suppress(SpillwayError):
                await self.app.broker.work.release(self.name, deliveries)
            return
        for d in deliveries:  # hold the slots while begin runs, so renewal covers them
            self._inflight[d] = None
        while True:
            try:
                started = await self.app.broker.work.begin(deliveries)
                break
            except BrokerUnavailable as exc:
                if self._stopping.is_set():
                    return  # left in _inflight: released at shutdown
                log.warning("begin failed, retrying: %s", exc)
                await self._sleep(0.2)
        for d, s in zip(deliveries, started, strict=True):
            if s is None:
                self._release_slot(d)
            else:
                timed = metrics.timed_run(s.type, s.attempts, s.created_at_ms, self._run(s))
                run = asyncio.create_task(timed, name=f"spillway-task-{d.task_id}")
                self._inflight[d] = run

    def _release_slot(self, d: Delivery) -> None:
        self._inflight.pop(d, None)
        self._slot_freed.set()

    async def _run(self, s: Started) -> None:
        self._outcomes.put_nowait(await execute(self.app.tasks.get(s.type), s, self._executor))

    # --- finishing ---------------------------------------------------------------------------

    async def _finish_loop(self) -> None:
        while True:
            batch = [await self._outcomes.get()]
            while not self._outcomes.empty() and len(batch) < 1000:
                batch.append(self._outcomes.get_nowait())
            backoff = 0.05
            while True:
                try:
                    await self.app.broker.work.finish(batch)
                    break
                except BrokerUnavailable as exc:
                    # Keep the outcomes: they are stored as soon as Redis is back.
                    log.warning("storing %d outcomes failed, retrying: %s", len(batch), exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
            for o in batch:
                metrics.task_finished(o.type, o.kind)
                self.processed += 1
                self._release_slot(o.delivery)
                self._outcomes.task_done()

    # --- keeping: due tasks, reclaims, claim renewal, heartbeat ------------------------------

    async def _keep_loop(self) -> None:
        s = self.settings
        every = {  # seconds between runs of each chore
            "reclaim": min(1.0, s.visibility_timeout / 4),
            "beat": s.heartbeat_interval,
            "prune": 60.0,
        }
        last = dict.fromkeys(every, time.monotonic())
        cursors: dict[tuple[str, int], str] = {}
        while not self._stopping.is_set():
            now = time.monotonic()
            try:
                # Due tasks are checked often so delays and retry backoffs stay accurate.
                await self.app.broker.work.promote_due(self.queues)
                if now - last["reclaim"] >= every["reclaim"]:
                    await self._reclaim(cursors)
                    last["reclaim"] = now
                if now - last["beat"] >= every["beat"]:
                    await self._heartbeat()
                    last["beat"] = now
                if now - last["prune"] >= every["prune"]:
                    idle_ms = int(max(600.0, s.visibility_timeout * 10) * 1000)
                    await self.app.broker.work.prune_consumers(self.queues, idle_ms)
                    last["prune"] = now
            except BrokerUnavailable as exc:
                log.warning("maintenance failed: %s", exc)
            await self._sleep(_PROMOTE_INTERVAL)

    async def _reclaim(self, cursors: dict[tuple[str, int], str]) -> None:
        broker = self.app.broker
        min_idle = int(self.settings.visibility_timeout * 1000)
        for queue, shard in broker.core.streams(self.queues).values():
            free = min(self._free(), self.settings.batch_size)
            if free <= 0 or self._stopping.is_set():
                return
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
            await self.app.broker.work.renew(self.name, mine)

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
