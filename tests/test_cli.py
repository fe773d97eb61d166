"""The `spillway` command: help, errors, worker, stats, dead letters, submit/status and dev."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner
from tests.apps import basic
from tests.clitools import (
    APP,
    Lines,
    alive,
    child_env,
    command_line,
    descendants,
    finish,
    invoke,
    reaped,
    settings,
    spawn,
    terminate,
    until,
)
from tests.engine import drain, past_expiry

from spillway import Settings, Spillway, TaskStatus
from spillway.cli import main
from spillway.scheduler import Scheduler


@pytest.fixture
def cfg(redis_url: str, key_prefix: str) -> Settings:
    return settings(redis_url, key_prefix)


@pytest.fixture
async def app(cfg: Settings) -> AsyncIterator[Spillway]:
    application = basic.build(cfg)
    yield application
    await application.close()


COMMANDS = [
    [], ["worker"], ["api"], ["dev"], ["stats"], ["dlq"], ["dlq", "list"], ["dlq", "replay"],
    ["dlq", "purge"], ["submit"], ["status"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "spillway")
def test_every_command_explains_itself_in_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # The first line of the docstring, not just a usage line.
    assert len(result.output.split("\n\n")[1].strip()) > 20


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_colon", "must look like 'module:attribute'"),
        ("tests.apps.no_such_module:app", "cannot import module 'tests.apps.no_such_module'"),
        ("tests.apps.basic:nothing", "has no attribute 'nothing'"),
        ("tests.apps.basic:build", "not a Spillway application"),
    ],
)
async def test_a_bad_app_reference_is_one_red_line_not_a_traceback(
    cfg: Settings, ref: str, message: str
) -> None:
    result = await invoke(cfg, "worker", ref)
    assert result.exit_code == 78
    assert message in result.output
    assert "Traceback" not in result.output


async def test_redis_down_is_one_line_not_a_traceback(key_prefix: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        result = await invoke(settings(f"redis://127.0.0.1:{port}/0", key_prefix), "stats")
    assert result.exit_code == 1
    assert result.output.startswith("Error: Redis is unreachable")
    assert result.output.count("\n") == 1


async def test_worker_burst_drains_tasks_enqueued_beforehand(cfg: Settings, app: Spillway) -> None:
    ids = [await app.enqueue("add", {"a": i, "b": 1}) for i in range(20)]

    code, out = await finish(spawn(cfg, "worker", APP, "--burst"))

    assert code == 0, out
    records = [await app.get(i) for i in ids]
    assert [r.status for r in records] == [TaskStatus.SUCCEEDED] * 20
    assert [r.result for r in records] == [i + 1 for i in range(20)]


async def test_worker_logs_json_lines_when_asked(cfg: Settings, app: Spillway) -> None:
    await app.enqueue("add", {"a": 1, "b": 2})

    code, out = await finish(spawn(cfg, "worker", APP, "--burst", "--log-format", "json"))

    assert code == 0, out
    events = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(e["logger"] == "spillway.worker" and "drained" in e["message"] for e in events)
    assert {"time", "level", "logger", "pid", "message"} <= set(events[0])


async def test_stats_json_reflects_the_queue(cfg: Settings, app: Spillway) -> None:
    for i in range(3):
        await app.enqueue("add", {"a": i, "b": i})
    await app.enqueue("nap", {}, delay=60)

    result = await invoke(cfg, "stats", "--json")

    assert result.exit_code == 0, result.output
    figures = orjson.loads(result.output)
    assert figures["queues"] == [
        {"queue": "default", "backlog": 3, "pending": 0, "delayed": 1, "dead": 0}
    ]
    assert figures["workers"] == []


async def test_stats_tables_show_queues_and_outcomes(cfg: Settings, app: Spillway) -> None:
    await app.enqueue("add", {"a": 1, "b": 2})
    assert (await finish(spawn(cfg, "worker", APP, "--burst")))[0] == 0

    result = await invoke(cfg, "stats")

    assert result.exit_code == 0, result.output
    assert "Queues" in result.output
    assert "default" in result.output
    assert "add" in result.output
    assert "succeeded" in result.output


async def test_stats_list_the_schedules_workers_recorded(cfg: Settings, app: Spillway) -> None:
    @app.cron("30 2 * * 1", name="weekly-digest", tz="Asia/Tokyo")
    async def digest(payload: Any) -> None: ...

    await Scheduler(app, app.schedules.values()).check()

    result = await invoke(cfg, "stats")
    assert result.exit_code == 0, result.output
    assert "Schedules" in result.output
    for shown in ("weekly-digest", "digest", "30 2 * * 1", "Asia/Tokyo"):
        assert shown in result.output
    figures = orjson.loads((await invoke(cfg, "stats", "--json")).output)
    [listed] = figures["schedules"]
    assert (listed["name"], listed["last_run"]) == ("weekly-digest", None)  # not due yet
    assert listed["next_run"] is not None


async def test_stats_count_the_tasks_that_expired_unrun(cfg: Settings, app: Spillway) -> None:
    task_id = await app.enqueue("add", {"a": 1, "b": 2}, expires=0.05)
    await past_expiry(app, task_id)
    await drain(app)

    figures = orjson.loads((await invoke(cfg, "stats", "--json")).output)
    table = await invoke(cfg, "stats")

    assert figures["counts"] == {"add": {"expired": 1}}
    assert "expired" in table.output


async def test_dead_letters_can_be_listed_replayed_and_purged(cfg: Settings, app: Spillway) -> None:
    ids = [await app.enqueue("boom", {}) for _ in range(3)]
    assert (await finish(spawn(cfg, "worker", APP, "--burst")))[0] == 0

    listed = await invoke(cfg, "dlq", "list", "--json")
    assert listed.exit_code == 0, listed.output
    dead = orjson.loads(listed.output)
    assert sorted(d["id"] for d in dead) == sorted(ids)
    assert all(d["error"] == "RuntimeError: boom [on purpose]" for d in dead)
    table = await invoke(cfg, "dlq", "list")
    assert "boom [on" in table.output  # user text is not read as rich markup (may be cut short)

    one = await invoke(cfg, "dlq", "replay", ids[0], "--yes")
    assert one.exit_code == 0, one.output
    assert "replayed 1 task(s)" in one.output
    assert (await app.get(ids[0])).status is TaskStatus.QUEUED

    declined = await invoke(cfg, "dlq", "replay", "--all", input="n\n")
    assert declined.exit_code == 1
    assert "Replay 2 dead-lettered task(s)?" in declined.output
    accepted = await invoke(cfg, "dlq", "replay", "--all", input="y\n")
    assert "replayed 2 task(s)" in accepted.output
    assert {(await app.get(i)).status for i in ids} == {TaskStatus.QUEUED}

    assert (await finish(spawn(cfg, "worker", APP, "--burst")))[0] == 0
    purged = await invoke(cfg, "dlq", "purge", "--yes")
    assert purged.exit_code == 0, purged.output
    assert "purged 3 dead letter(s)" in purged.output
    assert orjson.loads((await invoke(cfg, "dlq", "list", "--json")).output) == []


async def test_replay_needs_a_task_id_or_all(cfg: Settings) -> None:
    result = await invoke(cfg, "dlq", "replay")
    assert result.exit_code == 2
    assert "give either a TASK_ID or --all" in result.output

    missing = await invoke(cfg, "dlq", "replay", "0" * 32, "--yes")
    assert missing.exit_code == 1
    assert "is not in the dead letters" in missing.output


async def test_submit_prints_an_id_that_status_follows_to_the_result(
    cfg: Settings, app: Spillway
) -> None:
    code, out = await finish(spawn(cfg, "submit", "add", '{"a": 2, "b": 3}', "--app", APP))
    assert code == 0, out
    task_id = out.strip()

    queued = await invoke(cfg, "status", task_id, "--json")
    assert queued.exit_code == 0, queued.output
    assert orjson.loads(queued.output)["status"] == "queued"

    worker = spawn(cfg, "worker", APP)
    with reaped(worker):
        done = await invoke(cfg, "status", task_id, "--wait", "20", "--json")
        assert (await terminate(worker))[0] == 0
    record = orjson.loads(done.output)
    assert (record["status"], record["result"], record["attempts"]) == ("succeeded", 5, 1)
    shown = await invoke(cfg, "status", task_id)
    assert "succeeded" in shown.output


async def test_submit_refuses_an_invalid_payload_in_one_line(cfg: Settings) -> None:
    code, out = await finish(spawn(cfg, "submit", "add", '{"a": 2}', "--app", APP))
    assert code == 1
    assert out == "Error: invalid payload for 'add': b: Field required\n"

    code, out = await finish(spawn(cfg, "submit", "add", "{nope", "--app", APP))
    assert code == 2
    assert "not valid JSON" in out


async def test_status_of_an_unknown_task_is_an_error(cfg: Settings) -> None:
    result = await invoke(cfg, "status", "f" * 32)
    assert result.exit_code == 1
    assert result.output == f"Error: no task with id '{'f' * 32}'\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
async def test_dev_runs_redis_and_a_worker_and_stops_everything_on_sigterm() -> None:
    port = _free_port()
    assert "SPILLWAY_REDIS_URL" not in child_env(None)  # so dev starts its own Redis
    dev = spawn(None, "dev", "--port", str(port))
    with reaped(dev):
        lines = Lines(dev)
        await lines.wait_for("spillway dev is running")
        children = descendants(dev.pid)
        names = [command_line(p) for p in children]
        assert any("redis-server" in n or "valkey-server" in n for n in names), names
        assert any("spillway worker spillway.example:app" in n for n in names), names
        if any("spillway api" in n for n in names):
            async with httpx.AsyncClient() as client:

                async def healthy() -> bool:
                    try:
                        return (await client.get(f"http://127.0.0.1:{port}/healthz")).is_success
                    except httpx.TransportError:
                        return False

                await until(healthy, what="/healthz")

        dev.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(dev.wait, 30)
        lines.close()

    assert code == 0, "".join(lines.seen)
    assert alive(children) == []
