"""The running event loop without a system call per ask, and a timeout that knows its loop.

On Python 3.11, every `asyncio.get_running_loop()` calls ``getpid()`` (to notice a fork;
3.12 dropped the check), and so do `asyncio.create_task`, `asyncio.current_task()` and
`asyncio.timeout`, which ask for the loop themselves: three system calls for one
`asyncio.timeout`. On the hot paths (the accept route, a worker's runs) they were 6 % of an
API process's samples and a fifth of a worker's busy ones (docs/benchmarks.md#cpu-budget-per-task).
`LoopCache` asks once per loop; `RunTimeout` is `asyncio.timeout` given its loop and task.
`Stepped` lets a coroutine run its first step before anyone decides how to await the rest: a
worker's run arms its timeout only for a handler that did not end in that step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar

__all__ = ["LoopCache", "RunTimeout", "Stepped"]

T = TypeVar("T")


class LoopCache:
    """The loop running in this thread, asked of asyncio only when it may have changed.

    A loop kept from an earlier ask is still the running one while it runs in the same thread:
    a thread runs one loop at a time. Otherwise (a loop closed and another started, as tests and
    `asyncio.run` do) asyncio is asked again. Raises RuntimeError outside a running loop, as
    `asyncio.get_running_loop` does.
    """

    __slots__ = ("_loop", "_thread")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def get(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        thread = threading.get_ident()  # no system call: the thread's own pointer
        if loop is not None and self._thread == thread and loop.is_running():
            return loop
        loop = self._loop = asyncio.get_running_loop()
        self._thread = thread
        return loop


class RunTimeout:
    """`asyncio.timeout(delay)` for `task` on `loop`: the same semantics (the task is cancelled
    at the deadline and the CancelledError becomes TimeoutError on the way out, unless another
    cancellation was asked for meanwhile), without asking asyncio for the loop and the task."""

    __slots__ = ("_cancelling", "_delay", "_expired", "_handle", "_loop", "_task")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object], delay: float
    ) -> None:
        self._loop = loop
        self._task = task
        self._delay = delay
        self._cancelling = 0
        self._expired = False
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> RunTimeout:
        self._cancelling = self._task.cancelling()
        self._handle = self._loop.call_at(self._loop.time() + self._delay, self._expire)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _expire(self) -> None:
        self._handle = None
        self._expired = True
        self._task.cancel()


class Stepped(Generic[T]):
    """A coroutine that has run its first step (``coro.send(None)``) and waits on `pending`,
    what that step yielded: awaited in a task, it goes on as if the task had run that step.

    The task waits on `pending` first; a cancellation thrown in meanwhile is passed to the
    coroutine, which may catch it and wait again. Then the coroutine's own iterator takes
    over (`yield from`), so later steps cost what they cost under a plain ``await``.
    """

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, T], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, None, T]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the task: a cancellation
                try:
                    pending = coro.throw(exc)
                except StopIteration as done:
                    value: T = done.value
                    return value
                continue
            # A task sends None when what it waited on is done, as here.
            return (yield from coro.__await__())
