"""In a real headless Chromium: another site's form, another site's frame, and /docs offline."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, ConsoleMessage, Route
from tests.api.servers import ApiServer, drain, serving
from tests.browser import chromium

from spillway import Spillway, TaskStatus
from spillway.embedded import EmbeddedRedis

pytestmark = pytest.mark.slow


class EvilSite:
    """A second local HTTP server, on another port (another origin), serving one page."""

    def __init__(self) -> None:
        self.page = b""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(site.page)))
                self.end_headers()
                self.wfile.write(site.page)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def serve(self, html: str) -> str:
        self.page = html.encode()
        return self.url


@pytest.fixture(scope="module")
def evil() -> Iterator[EvilSite]:
    site = EvilSite()
    thread = threading.Thread(target=site.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        site.server.shutdown()
        site.server.server_close()


@pytest.fixture(scope="module")
def server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """Open mode: what `spillway dev` serves on a laptop, where the attack matters most."""
    yield from serving(redis_server.url, tmp_path_factory.mktemp("browser"))


@pytest.fixture
async def app(server: ApiServer) -> AsyncIterator[Spillway]:
    application = server.spillway()
    yield application
    await application.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest.mark.parametrize("enctype", ["application/x-www-form-urlencoded", "text/plain"])
@pytest.mark.parametrize("action", ["/dashboard/replay/{id}", "/dlq/{id}/replay"])
async def test_another_sites_auto_submitting_form_does_not_replay_a_dead_letter(
    browser: Browser, server: ApiServer, app: Spillway, evil: EvilSite, action: str, enctype: str
) -> None:
    task_id = await app.enqueue("explode", {"message": "stay dead"})
    await drain(app, task_id)
    target = server.url + action.format(id=task_id)
    url = evil.serve(
        f'<form method="post" action="{target}" enctype="{enctype}">'
        '<input name="x" value="1"></form>'
        "<script>document.forms[0].submit()</script>"
    )
    page = await browser.new_page()
    try:
        async with page.expect_response(target) as answer:
            await page.goto(url)
        response = await answer.value
        assert response.status == 403
        assert response.headers["content-type"] == "application/problem+json"
    finally:
        await page.close()
    assert (await app.get(task_id)).status is TaskStatus.DEAD


async def test_another_site_cannot_frame_the_dashboard(
    browser: Browser, server: ApiServer, evil: EvilSite
) -> None:
    url = evil.serve(f'<iframe src="{server.url}/dashboard" width="800" height="600"></iframe>')
    page = await browser.new_page()
    refusals: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "frame-ancestors" in message.text or "X-Frame-Options" in message.text:
            refusals.append(message.text)

    page.on("console", on_console)
    try:
        async with page.expect_response(f"{server.url}/dashboard") as answer:
            await page.goto(url)
        assert (await answer.value).status == 200  # served, with its policy...
        await page.wait_for_load_state("load")
        frame = page.frames[1]
        # ...and never shown: Chromium puts its error page in the frame instead.
        assert await frame.evaluate("document.querySelector('#backlog')") is None
        assert not frame.url.startswith(server.url)
    finally:
        await page.close()
    assert any("frame-ancestors 'none'" in r for r in refusals), refusals


async def test_docs_render_without_a_request_leaving_the_machine(
    browser: Browser, server: ApiServer
) -> None:
    context = await browser.new_context()
    hosts: set[str] = set()
    problems: list[str] = []

    async def record(route: Route) -> None:
        host = urlsplit(route.request.url).hostname or ""
        hosts.add(host)
        if host == "127.0.0.1":
            await route.continue_()
        else:
            await route.abort()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)  # a Content-Security-Policy refusal is one

    await context.route("**/*", record)
    page = await context.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        await page.goto(f"{server.url}/docs")
        await page.wait_for_selector("#operations-tasks-submitTask", timeout=15_000)
        assert "Spillway" in await page.inner_text(".info .title")
        await page.click("#operations-tasks-submitTask .opblock-summary")
        await page.wait_for_selector("#operations-tasks-submitTask .opblock-body", timeout=5_000)
    finally:
        await context.close()
    assert hosts == {"127.0.0.1"}
    assert problems == []
