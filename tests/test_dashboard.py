"""The dashboard: protected by the API keys, and live in a real headless Chromium."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import ConsoleMessage, Error, Page
from tests.api.servers import ApiServer, drain
from tests.browser import chromium

from spillway import Spillway, TaskStatus
from spillway.embedded import EmbeddedRedis

KEY = "dashboard-key"
BEARER = {"Authorization": f"Bearer {KEY}"}
RESIZE = {"url": "https://example.com/a.png", "width": 2, "height": 3}


def basic(password: str) -> dict[str, str]:
    token = base64.b64encode(f"ops:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def server(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[ApiServer]:
    s = ApiServer(redis_server.url, {"SPILLWAY_API_KEYS": KEY}).start(tmp_path)
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
        assert [r.status_code for r in [*accepted, boom]] == [202] * 5
        await text_of(page, "#backlog", "5")
        assert await page.evaluate("Math.max(...window.spillwayDashboard.data.accepted)") > 0

        await drain(app)
        await text_of(page, "#backlog", "0")
        await text_of(page, "#succeeded", "4")
        await text_of(page, "#dead", "1")
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
