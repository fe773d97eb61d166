"""`spillway.loops`: the loop cache and the run timeout keep asyncio's semantics."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from spillway.loops import LoopCache, RunTimeout, Stepped

T = TypeVar("T")


async def test_the_cache_gives_the_running_loop() -> None:
    cache = LoopCache()
    assert cache.get() is asyncio.get_running_loop()
    assert cache.get() is asyncio.get_running_loop()  # the kept one, still right


def test_the_cache_follows_a_new_loop_and_refuses_outside_one() -> None:
    cache = LoopCache()

    async def ask() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        return cache.get(), asyncio.get_running_loop()

    first, running = asyncio.run(ask())
    assert first is running
    second, running = asyncio.run(ask())  # the first loop is closed: asked again
    assert second is running
    assert second is not first
    with pytest.raises(RuntimeError):
        cache.get()  # no loop runs here


async def test_the_cache_gives_another_thread_its_own_loop() -> None:
    cache = LoopCache()
    mine = cache.get()
    seen: list[asyncio.AbstractEventLoop] = []

    async def ask() -> None:
        seen.append(cache.get())
        assert seen[-1] is asyncio.get_running_loop()

    thread = threading.Thread(target=lambda: asyncio.run(ask()))
    thread.start()
    await asyncio.to_thread(thread.join)
    assert len(seen) == 1
    assert seen[0] is not mine
    assert cache.get() is mine


async def _under(timeout: float, work: float) -> tuple[str, int]:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    try:
        async with RunTimeout(loop, task, timeout):
            await asyncio.sleep(work)
    except TimeoutError:
        return "timeout", task.cancelling()
    return "done", task.cancelling()


async def test_a_run_past_its_timeout_gets_timeout_error_and_no_cancel_left() -> None:
    assert await asyncio.create_task(_under(0.01, 5)) == ("timeout", 0)
    assert await asyncio.create_task(_under(5, 0)) == ("done", 0)


async def test_a_cancel_from_outside_during_the_timeout_stays_a_cancel() -> None:
    started = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        async with RunTimeout(loop, task, 5):
            started.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancel_asked_for_as_the_timeout_fires_is_not_swallowed() -> None:
    # asyncio.timeout's rule: a cancel of the task's own, besides the timeout's, stays a
    # CancelledError (the shutdown of a worker whose run timed out at the same moment).
    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        async with RunTimeout(loop, task, 0):
            task.cancel()  # a second request, before the timeout's lands
            await asyncio.sleep(5)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(run())


async def _stepped(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro`'s first step here, then await the rest through `Stepped`."""
    try:
        pending = coro.send(None)
    except StopIteration as done:
        value: T = done.value
        return value
    return await Stepped(coro, pending)


async def test_a_stepped_coroutine_goes_on_where_its_first_step_stopped() -> None:
    seen: list[str] = []
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def work() -> str:
        seen.append("first step")
        await asyncio.sleep(0)  # a bare yield
        got = await gate  # a future, done later
        seen.append(got)
        await asyncio.sleep(0.01)  # a timer
        return got.upper()

    task = asyncio.create_task(_stepped(work()))
    await asyncio.sleep(0)
    assert seen == ["first step"]
    gate.set_result("opened")
    assert await task == "OPENED"
    assert seen == ["first step", "opened"]


async def test_a_cancel_reaches_a_stepped_coroutine_which_may_catch_it() -> None:
    first_wait = asyncio.Event()
    caught: list[str] = []

    async def work() -> str:
        try:
            first_wait.set()
            await asyncio.sleep(5)  # where its first step stopped
        except asyncio.CancelledError:
            caught.append("first")
            await asyncio.sleep(0)
        return "ended on its own terms"

    task = asyncio.create_task(_stepped(work()))
    await first_wait.wait()
    task.cancel()
    assert await task == "ended on its own terms"
    assert caught == ["first"]

    async def stubborn() -> None:
        await asyncio.sleep(5)

    other = asyncio.create_task(_stepped(stubborn()))
    await asyncio.sleep(0)
    other.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other


async def test_a_stepped_coroutine_raises_what_it_raises_after_waiting() -> None:
    async def work() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    with pytest.raises(KeyError, match="later"):
        await asyncio.create_task(_stepped(work()))
