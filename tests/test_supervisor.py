"""The worker supervisor: P child processes, restarted when they crash, stopped as one."""

from __future__ import annotations

import itertools
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from tests.apps import basic
from tests.clitools import (
    APP,
    alive,
    command_line,
    descendants,
    finish,
    reaped,
    settings,
    spawn,
    terminate,
    until,
)

from spillway import Settings, Spillway, TaskStatus
from spillway.supervisor import EXIT_CONFIG, Supervisor


@pytest.fixture
def cfg(redis_url: str, key_prefix: str) -> Settings:
    return settings(redis_url, key_prefix)


@pytest.fixture
async def app(cfg: Settings) -> AsyncIterator[Spillway]:
    application = basic.build(cfg)
    yield application
    await application.close()


def _workers(pid: int) -> list[int]:
    """PIDs of the supervisor's worker children."""
    return [p.pid for p in alive(descendants(pid)) if "worker" in command_line(p)]


async def test_two_processes_in_burst_drain_everything_and_exit_0(
    cfg: Settings, app: Spillway
) -> None:
    ids = [await app.enqueue("add", {"a": i, "b": 0}) for i in range(200)]

    code, out = await finish(spawn(cfg, "worker", APP, "--processes", "2", "--burst"))

    assert code == 0, out
    assert out.count("finished") == 2, out
    assert {(await app.get(i)).status for i in ids} == {TaskStatus.SUCCEEDED}


@pytest.mark.slow
async def test_a_child_killed_with_sigkill_is_replaced_and_work_goes_on(
    cfg: Settings, app: Spillway
) -> None:
    supervisor = spawn(cfg, "worker", APP, "--processes", "2", "--concurrency", "4")
    with reaped(supervisor):
        await until(lambda: len(_workers(supervisor.pid)) == 2, what="two workers")
        first = _workers(supervisor.pid)
        psutil.Process(first[0]).kill()

        async def replaced() -> bool:
            # The replacement counts once it runs and beats its heartbeat (it consumes then).
            new = set(_workers(supervisor.pid)) - set(first)
            return bool(new & {w.pid for w in (await app.stats()).workers})

        await until(replaced, what="a replacement worker")
        ids = [await app.enqueue("nap", {"seconds": 0.05}) for _ in range(40)]

        async def done() -> bool:
            return (await app.stats()).counts.get("nap", {}).get("succeeded", 0) == len(ids)

        await until(done, what="every task done")
        children = descendants(supervisor.pid)
        code, out = await terminate(supervisor)

    assert {(await app.get(i)).status for i in ids} == {TaskStatus.SUCCEEDED}
    assert "was killed by SIGKILL: restarting" in out
    assert code == 0, out
    assert alive(children) == []


async def test_sigterm_stops_every_child_and_the_supervisor_exits_0(cfg: Settings) -> None:
    supervisor = spawn(cfg, "worker", APP, "--processes", "2")
    with reaped(supervisor):
        await until(lambda: len(_workers(supervisor.pid)) == 2, what="two workers")
        children = descendants(supervisor.pid)
        code, out = await terminate(supervisor)

    assert code == 0, out
    assert alive(children) == []


def _script(tmp_path: Path, exit_code: int, succeed_after: int) -> list[str]:
    """A child that logs each start to a file and exits `exit_code` until its Nth start."""
    log = tmp_path / "starts"
    code = (
        "import pathlib, sys, time\n"
        f"log = pathlib.Path({str(log)!r})\n"
        "with log.open('a') as f: f.write(f'{time.monotonic()}\\n')\n"
        f"sys.exit(0 if len(log.read_text().splitlines()) >= {succeed_after} else {exit_code})\n"
    )
    return [sys.executable, "-c", code]


def _starts(tmp_path: Path) -> list[float]:
    return [float(t) for t in (tmp_path / "starts").read_text().split()]


def test_a_crashing_child_is_restarted_with_capped_exponential_backoff(tmp_path: Path) -> None:
    supervisor = Supervisor([_script(tmp_path, 1, 5)], backoff_base=0.05, backoff_cap=0.2)

    assert supervisor.run() == 0

    starts = _starts(tmp_path)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 5
    # 0.05, 0.1, 0.2, then capped at 0.2 (each gap also includes the child's start-up).
    for gap, backoff in zip(gaps, [0.05, 0.1, 0.2, 0.2], strict=True):
        assert gap >= backoff
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are put back


def test_a_configuration_error_in_a_child_is_not_retried(tmp_path: Path) -> None:
    supervisor = Supervisor(
        [_script(tmp_path, EXIT_CONFIG, 99), [sys.executable, "-c", "import time; time.sleep(60)"]],
        backoff_base=0.01,
    )

    started = time.monotonic()
    assert supervisor.run() == EXIT_CONFIG

    assert len(_starts(tmp_path)) == 1
    assert time.monotonic() - started < 30  # the sleeper was stopped, not waited for
    assert supervisor.pids == []
