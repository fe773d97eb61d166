"""`make screenshot`: docs/dashboard.png, the dashboard of `spillway dev` under a steady load.

Runs `spillway dev` (embedded Redis, the API, one worker) on a free port, submits a mix of
quick, slow and failing tasks for about half a minute, and captures the page in Chromium.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tests.api.servers import free_port
from tests.browser import chromium

from spillway.supervisor import stop_process

LOAD_SECONDS = 30.0


async def load(base: str, until: float) -> None:
    """About 40 tasks a second: word counts, some half-second resizes, a few doomed ones."""
    resize = {"url": "https://example.com/cat.png", "width": 64, "height": 64}
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        i = 0
        while time.monotonic() < until:
            i += 1
            bodies: list[dict[str, object]] = [
                {"type": "word_count", "payload": {"text": "to be or not to be " * (i % 7 + 1)}}
            ]
            if i % 3 == 0:
                bodies.append({"type": "resize_image", "payload": resize})
            if i % 40 == 0:
                bodies.append({"type": "flaky", "payload": {"failure_rate": 1.0}})
            if i % 10 == 0:
                bodies.append({"type": "flaky", "payload": {"failure_rate": 0.5}})
            for body in bodies:
                await client.post("/tasks", json=body)
            await asyncio.sleep(0.025 + 0.02 * ((i // 100) % 2))


async def capture(base: str, out: Path) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=1) as client:
        for _ in range(600):
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await page.goto(f"{base}/dashboard?interval=500")
        await load(base, time.monotonic() + LOAD_SECONDS)
        out.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(out), full_page=True)


def main(out: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPILLWAY_", "PROMETHEUS_"))}
    dev = subprocess.Popen(  # noqa: S603 - our own interpreter, no shell
        [sys.executable, "-m", "spillway", "dev", "--port", str(port), "--log-level", "error"],
        env=env,
        stdout=subprocess.DEVNULL,
        process_group=0,
    )
    try:
        asyncio.run(capture(f"http://127.0.0.1:{port}", out))
    finally:
        stop_process(dev)
    print(f"saved {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png"))
