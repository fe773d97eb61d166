"""What the `spillway` command prints: dead-letter tables, replay counts, task log lines."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from tests.apps import basic
from tests.clitools import APP, finish, invoke, settings, spawn

from spillway import Settings, Spillway, TaskStatus, views


@pytest.fixture
def cfg(redis_url: str, key_prefix: str) -> Settings:
    return settings(redis_url, key_prefix)


@pytest.fixture
async def app(cfg: Settings) -> AsyncIterator[Spillway]:
    application = basic.build(cfg)
    yield application
    await application.close()


async def test_dead_letters_are_a_table_with_their_error(cfg: Settings, app: Spillway) -> None:
    task_id = await app.enqueue("boom", {"seconds": 0})
    assert (await finish(spawn(cfg, "worker", APP, "--burst")))[0] == 0
    result = await invoke(cfg, "dlq", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "Dead letters (1 shown)" in lines[0]
    header = next(line for line in lines if "last error" in line)
    for column in ("type", "queue", "tries", "failed"):
        assert column in header
    row = next(i for i, line in enumerate(lines) if task_id in line)
    assert "boom" in lines[row]
    assert "RuntimeError: boom [on purpose]" in lines[row + 1]


async def test_bulk_replay_asks_with_the_count_and_reports_it(cfg: Settings, app: Spillway) -> None:
    ids = [await app.enqueue("boom", {}) for _ in range(4)]
    assert (await finish(spawn(cfg, "worker", APP, "--burst")))[0] == 0
    result = await invoke(cfg, "dlq", "replay", "--all", input="y\n")
    assert result.exit_code == 0, result.output
    assert "Replay 4 dead-lettered task(s)? [y/N]" in result.output
    assert result.output.rstrip().endswith("replayed 4 task(s)")
    assert {(await app.get(i)).status for i in ids} == {TaskStatus.QUEUED}


async def test_task_log_lines_carry_id_type_and_attempt_but_no_payload(
    cfg: Settings, app: Spillway
) -> None:
    task_id = await app.enqueue("boom", {"seconds": 0.123456})
    code, out = await finish(
        spawn(cfg, "worker", APP, "--burst", "--log-format", "json", "--log-level", "info")
    )
    assert code == 0, out
    events = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(events) == len(out.splitlines()), out  # every line is one JSON event
    dead = [e for e in events if e.get("task_id") == task_id]
    assert len(dead) == 1, events
    assert dead[0]["task_type"] == "boom"
    assert dead[0]["attempt"] == 1
    assert dead[0]["level"] == "error"
    assert "0.123456" not in out  # the payload is never logged


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("rediss://:p%40ss@cache:6380/0", "rediss://:***@cache:6380/0"),
        (
            "rediss://app:secret@cache:6380/0?ssl_ca_certs=/ca.pem",
            "rediss://app:***@cache:6380/0?ssl_ca_certs=/ca.pem",
        ),
        ("redis+cluster://u:pw@a:7000,b:7001", "redis+cluster://u:***@a:7000,b:7001"),
    ],
)
def test_a_redis_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert views.masked(url) == shown
