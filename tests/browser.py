"""Debian's Chromium driven by Playwright: for the dashboard test and `make screenshot`.

Playwright's own browser downloads are never used: the browser is ``/usr/bin/chromium``
(`make chromium` installs it). Without it the tests fail with a message saying so.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, async_playwright

CHROMIUM = Path(os.environ.get("SPILLWAY_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium; fails (never skips) when the browser is not installed."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - one stat, before anything starts
        raise RuntimeError(
            f"{CHROMIUM} not found: the dashboard tests need Debian's chromium package. "
            "Run `make chromium` (apt-get install -y chromium), or set SPILLWAY_CHROMIUM."
        )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()
