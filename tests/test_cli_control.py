"""`spillway queue pause|resume|events` and `spillway cancel`: confirmation, output, JSON and
errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from click.testing import CliRunner
from tests.apps import basic
from tests.clitools import invoke, settings

from spillway import Settings, Spillway, TaskStatus, Worker
from spillway.cli import main
from spillway.feed import follow


@pytest.fixture
def cfg(redis_url: str, key_prefix: str) -> Settings:
    return settings(redis_url, key_prefix)


@pytest.fixture
async def app(cfg: Settings) -> AsyncIterator[Spillway]:
    application = basic.build(cfg)
    await application.connect()  # its queues are known to Redis, as a deployed app's are
    yield application
    await application.close()


@pytest.mark.parametrize("command", [["queue"], ["queue", "pause"], ["queue", "resume"],
                                     ["queue", "events"], ["cancel"]])  # fmt: skip
def test_every_command_explains_itself_in_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert len(result.output.split("\n\n")[1].strip()) > 20


async def test_pause_asks_first_and_shows_in_stats(cfg: Settings, app: Spillway) -> None:
    declined = await invoke(cfg, "queue", "pause", "default", input="n\n")
    assert declined.exit_code == 1
    assert await app.paused() == []

    paused = await invoke(cfg, "queue", "pause", "default", input="y\n")
    assert paused.exit_code == 0, paused.output
    assert "queue 'default' paused" in paused.output
    again = await invoke(cfg, "queue", "pause", "default", "-y")
    assert "(it already was paused)" in again.output
    assert orjson.loads((await invoke(cfg, "stats", "--json")).output)["paused"] == ["default"]
    table = (await invoke(cfg, "stats")).output
    assert "default paused" in table

    resumed = await invoke(cfg, "queue", "resume", "default", "-y", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert orjson.loads(resumed.output) == {"queue": "default", "paused": False, "changed": True}
    assert await app.paused() == []


async def test_a_queue_no_task_uses_is_an_error(cfg: Settings, app: Spillway) -> None:
    result = await invoke(cfg, "queue", "pause", "nowhere", "-y")

    assert result.exit_code == 1
    assert "no queue named 'nowhere'" in result.output
    assert await app.paused() == []


async def test_cancel_counts_asks_and_cancels_what_the_filter_selects(
    cfg: Settings, app: Spillway
) -> None:
    low = [await app.enqueue("add", {"a": n, "b": 0}, priority="low") for n in range(4)]
    kept = await app.enqueue("nap", {}, priority="low")

    counted = await invoke(cfg, "cancel", "--type", "add", "--priority", "low", "--dry-run")
    assert counted.exit_code == 0, counted.output
    assert "4 waiting task(s) match" in counted.output
    declined = await invoke(cfg, "cancel", "--type", "add", input="n\n")
    assert "Cancel 4 waiting task(s)?" in declined.output
    assert declined.exit_code == 1
    assert {(await app.get(t)).status for t in low} == {TaskStatus.QUEUED}

    done = await invoke(cfg, "cancel", "-t", "add", "-p", "low", "--page", "3", input="y\n")
    assert done.exit_code == 0, done.output
    assert "cancelled 4 task(s)" in done.output
    assert {(await app.get(t)).status for t in low} == {TaskStatus.CANCELLED}
    assert (await app.get(kept)).status is TaskStatus.QUEUED

    repeated = await invoke(cfg, "cancel", "--queue", "default", "--type", "add", "-y", "--json")
    assert orjson.loads(repeated.output) == {"matched": 0, "cancelled": 0, "dry_run": False}


async def test_cancel_needs_a_criterion_and_a_known_queue(cfg: Settings, app: Spillway) -> None:
    task_id = await app.enqueue("add", {"a": 1, "b": 2})

    bare = await invoke(cfg, "cancel", "-y")
    unknown = await invoke(cfg, "cancel", "--queue", "nowhere", "-y")

    assert bare.exit_code == 2
    assert "give at least one of" in bare.output
    assert unknown.exit_code == 1
    assert "no queue named 'nowhere'" in unknown.output
    assert (await app.get(task_id)).status is TaskStatus.QUEUED


async def test_queue_events_prints_each_change_from_an_event_on_then_stops(
    cfg: Settings, app: Spillway
) -> None:
    # This process follows first, so the feeds hold what the command then reads back.
    joined = asyncio.Event()
    events = follow(app.feed, "default", joined=joined, timeout=30)
    first = asyncio.ensure_future(anext(events))
    await joined.wait()
    before = await app.enqueue("add", {"a": 1, "b": 2})
    after = await app.enqueue("boom", {"seconds": 0})
    start = await asyncio.wait_for(first, 10)
    await events.aclose()
    assert start.task_id == before

    listed = await invoke(cfg, "queue", "events", "default", "--last-event-id", start.event_id,
                          "-n", "1", "--json")  # fmt: skip
    assert listed.exit_code == 0, listed.output
    [line] = listed.output.splitlines()
    doc = orjson.loads(line)
    assert (doc["task_id"], doc["type"], doc["status"]) == (after, "boom", "queued")
    assert doc["event_id"] != start.event_id

    await Worker(app, burst=True).run()
    dead = await invoke(cfg, "queue", "events", "default", "--last-event-id", doc["event_id"],
                        "-s", "dead", "--for", "1")  # fmt: skip
    assert dead.exit_code == 0, dead.output
    [text] = dead.output.splitlines()
    assert text.split()[1:] == ["dead", "boom", after, "attempt", "1"]

    quiet = await invoke(cfg, "queue", "events", "default", "--for", "0.2")
    assert (quiet.exit_code, quiet.output) == (0, "")
    missing = await invoke(cfg, "queue", "events", "nowhere", "--for", "0.2")
    assert missing.exit_code == 1
    assert "no queue named 'nowhere'" in missing.output
