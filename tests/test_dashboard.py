"""The dashboard: protected by the API keys, and live in a real headless Chromium."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import ConsoleMessage, Error, Page
from tests.api.servers import ApiServer, drain
from tests.browser import chromium
from tests.engine import past_expiry

from spillway import Spillway, TaskStatus
from spillway.embedded import EmbeddedRedis
from spillway.scheduler import Scheduler

KEY = "dashboard-key"  # an admin key
CLIENT_KEY = "client-key"
BEARER = {"Authorization": f"Bearer {KEY}"}
RESIZE = {"url": "https://example.com/a.png", "width": 2, "height": 3}


def basic(password: str) -> dict[str, str]:
    token = base64.b64encode(f"ops:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def server(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[ApiServer]:
    env = {"SPILLWAY_ADMIN_KEYS": KEY, "SPILLWAY_API_KEYS": CLIENT_KEY}
    s = ApiServer(redis_server.url, env).start(tmp_path)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def http(server: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
async def app(server: ApiServer) -> AsyncIterator[Spillway]:
    application = server.spillway()
    yield application
    await application.close()


async def test_the_dashboard_asks_a_browser_for_the_api_key(http: httpx.AsyncClient) -> None:
    anonymous = await http.get("/dashboard")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic ")
    assert (await http.get("/dashboard", headers=basic("wrong"))).status_code == 401
    # A client key is a valid key, but not an admin's: no login prompt, a refusal.
    refused = await http.get("/dashboard", headers=basic(CLIENT_KEY))
    assert refused.status_code == 403
    assert "www-authenticate" not in refused.headers
    page = await http.get("/dashboard", headers=basic(KEY))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for asset in ("dashboard.js", "dashboard.css"):
        assert (await http.get(f"/dashboard/static/{asset}", headers=BEARER)).status_code == 200
    assert (await http.get("/dashboard/static/nothing.js", headers=BEARER)).status_code == 404
    state = await http.get("/dashboard/state", headers=BEARER)
    assert state.status_code == 200
    assert state.json()["broker_up"] is True


async def test_basic_credentials_open_only_the_dashboard(http: httpx.AsyncClient) -> None:
    task = {"type": "resize", "payload": RESIZE}
    assert (await http.post("/tasks", json=task, headers=basic(KEY))).status_code == 401
    assert (await http.get("/metrics", headers=basic(KEY))).status_code == 401


async def test_replay_from_another_site_is_refused(http: httpx.AsyncClient, app: Spillway) -> None:
    task_id = await app.enqueue("explode", {"message": "no"})
    await drain(app)
    # Browsers send Basic credentials by themselves; a cross-site form cannot add the header.
    refused = await http.post(f"/dashboard/replay/{task_id}", headers=basic(KEY))
    assert refused.status_code == 400
    assert (await app.get(task_id)).status is TaskStatus.DEAD
    headers = {**basic(KEY), "X-Spillway-Dashboard": "1"}
    replayed = await http.post(f"/dashboard/replay/{task_id}", headers=headers)
    assert replayed.status_code == 202
    assert (await app.get(task_id)).status is TaskStatus.QUEUED
    missing = await http.post(f"/dashboard/replay/{'0' * 32}", headers=headers)
    assert missing.status_code == 404


async def until(page: Page, expression: str, arg: object = None, timeout: float = 15.0) -> None:
    """Wait until `expression` is true in the page. Not `page.wait_for_function`: it compiles
    its predicate with eval, which the dashboard's Content-Security-Policy forbids."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await page.evaluate(expression, arg):
        assert asyncio.get_running_loop().time() < deadline, f"never true: {expression}"
        await asyncio.sleep(0.05)  # the page itself polls every 250 ms


async def text_of(page: Page, selector: str, expected: str) -> None:
    """Wait until the element shows `expected`."""
    await until(
        page,
        "([sel, want]) => document.querySelector(sel).textContent.trim() === want",
        [selector, expected],
    )


@pytest.mark.slow
async def test_the_dashboard_follows_tasks_and_replays_a_dead_letter(
    server: ApiServer, http: httpx.AsyncClient, app: Spillway
) -> None:
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    def on_error(error: Error) -> None:
        problems.append(f"page error: {error}")

    async with chromium() as browser:
        context = await browser.new_context(http_credentials={"username": "ops", "password": KEY})
        page = await context.new_page()
        page.on("console", on_console)
        page.on("pageerror", on_error)
        await page.goto(f"{server.url}/dashboard?interval=250")
        await until(page, "() => window.spillwayDashboard.polls >= 2")
        await text_of(page, "#status", "live")
        await text_of(page, "#backlog", "0")

        accepted = [
            (await http.post("/tasks", json={"type": "resize", "payload": RESIZE}, headers=BEARER))
            for _ in range(4)
        ]
        boom = await http.post(
            "/tasks", json={"type": "explode", "payload": {"message": "boom"}}, headers=BEARER
        )
        stale = await http.post(
            "/tasks", json={"type": "resize", "payload": RESIZE, "expires_s": 0.05}, headers=BEARER
        )
        assert [r.status_code for r in [*accepted, boom, stale]] == [202] * 6
        await text_of(page, "#backlog", "6")
        assert await page.evaluate("Math.max(...window.spillwayDashboard.data.accepted)") > 0

        await past_expiry(app, stale.json()["task_id"])
        await drain(app)
        await text_of(page, "#backlog", "0")
        await text_of(page, "#succeeded", "4")
        await text_of(page, "#dead", "1")
        await text_of(page, "#expired", "1")
        await until(page, "() => Math.max(...window.spillwayDashboard.data.succeeded) > 0")
        task_id = boom.json()["task_id"]
        assert "boom" in await page.inner_text("#failures")

        await page.click(f'button.replay[data-task-id="{task_id}"]')
        await until(
            page,
            "() => document.querySelector('#replay-message').textContent.startsWith('Replayed')",
        )
        await text_of(page, "#dead", "0")
        assert (await app.get(task_id)).status is TaskStatus.QUEUED
        await context.close()
    assert problems == []


async def test_the_dashboard_lists_the_schedules(server: ApiServer, app: Spillway) -> None:
    @app.cron("*/5 * * * *", name="cache-warmer", tz="Europe/Paris")
    async def warm(payload: Any) -> None: ...

    await Scheduler(app, app.schedules.values()).check()  # as a worker's keeper does

    async with chromium() as browser:
        context = await browser.new_context(http_credentials={"username": "ops", "password": KEY})
        page = await context.new_page()
        problems = watched(page)
        await page.goto(f"{server.url}/dashboard?interval=250")
        await text_of(page, "#status", "live")
        await until(page, "() => document.querySelector('#schedules td:not(.empty)') !== null")
        cells = await page.eval_on_selector_all(
            "#schedules tbody td", "cells => cells.map((c) => c.textContent)"
        )
        assert cells[:4] == ["cache-warmer", "warm", "*/5 * * * *", "Europe/Paris"]
        assert cells[5].startswith(("in ", "due"))  # the next tick, at most five minutes off
        await context.close()
    assert problems == []


def watched(page: Page) -> list[str]:
    """The console errors and warnings, and the uncaught errors, of `page` from now on."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    def on_error(error: Error) -> None:
        problems.append(f"page error: {error}")

    page.on("console", on_console)
    page.on("pageerror", on_error)
    return problems


@pytest.mark.slow
async def test_the_dashboard_pauses_and_resumes_a_queue_and_cancels_in_bulk(
    server: ApiServer, app: Spillway
) -> None:
    low = [await app.enqueue("resize", RESIZE, priority="low") for _ in range(3)]
    kept = await app.enqueue("resize", RESIZE)

    async with chromium() as browser:
        context = await browser.new_context(http_credentials={"username": "ops", "password": KEY})
        page = await context.new_page()
        problems = watched(page)
        page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before cancelling
        await page.goto(f"{server.url}/dashboard?interval=250")
        await text_of(page, "#status", "live")

        toggle = 'button.pause-toggle[data-queue="default"]'
        await text_of(page, toggle, "Pause")
        await page.click(toggle)
        await text_of(page, "#paused-count", "(1 paused)")
        await text_of(page, toggle, "Resume")
        assert await app.paused() == ["default"]
        await page.click(toggle)
        await text_of(page, toggle, "Pause")
        assert await app.paused() == []

        await page.select_option("#cancel-queue", "default")
        await page.select_option("#cancel-priority", "low")
        await page.click("#cancel-count")
        await text_of(page, "#cancel-message", "3 waiting task(s) match.")
        assert {(await app.get(t)).status for t in low} == {TaskStatus.QUEUED}
        await page.click("#cancel-run")  # asks first: the dialog is accepted
        await text_of(page, "#cancel-message", "Cancelled 3 task(s).")
        await context.close()
    assert {(await app.get(t)).status for t in low} == {TaskStatus.CANCELLED}
    assert (await app.get(kept)).status is TaskStatus.QUEUED
    assert problems == []
