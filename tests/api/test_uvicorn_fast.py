"""The fence around uvicorn's internals (`spillway.api.uvicorn_fast`): its start-up probe, and
the stock protocol `spillway.api.serve.server` falls back to, with one warning saying why."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import httpx
import pytest
import uvicorn
from tests.api.servers import ApiServer, in_process

from spillway.api import uvicorn_fast
from spillway.api.serve import HEAD_LIMIT, server
from spillway.embedded import EmbeddedRedis
from spillway.settings import Settings

LOCK = Path(__file__).resolve().parents[2] / "uv.lock"
WARNING = "Serving with uvicorn"


def _locked_uvicorn() -> str:
    found = re.search(r'name = "uvicorn"\nversion = "([^"]+)"', LOCK.read_text())
    assert found is not None
    return found[1]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(WARNING)]


async def _ok(scope: object, receive: object, send: object) -> None:
    """An ASGI app answering 200 with an empty body."""
    assert callable(send)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(url)


def test_the_probe_passes_on_the_locked_uvicorn() -> None:
    if uvicorn.__version__ != _locked_uvicorn():
        pytest.skip(f"uvicorn {uvicorn.__version__} is installed, not the locked one")

    assert uvicorn_fast.probe() is None


def test_the_probe_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uvicorn_fast, "_probed", [])
    first = uvicorn_fast.probe()
    monkeypatch.setattr(uvicorn_fast, "REQUIRED_BUILT", ("no_such_attribute",))

    assert uvicorn_fast.probe() == first


@pytest.fixture
def fresh_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe that passes on this uvicorn, its cached result forgotten."""
    if (why := uvicorn_fast.probe()) is not None:
        pytest.skip(f"the probe fails on uvicorn {uvicorn.__version__} already: {why}")
    monkeypatch.setattr(uvicorn_fast, "_probed", [])


@pytest.mark.usefixtures("fresh_probe")
def test_a_missing_private_name_fails_the_probe_with_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        uvicorn_fast, "REQUIRED_BUILT", (*uvicorn_fast.REQUIRED_BUILT, "no_such_attribute")
    )

    why = uvicorn_fast.probe()

    assert why is not None
    assert "no_such_attribute" in why


@pytest.mark.usefixtures("fresh_probe")
def test_a_changed_signature_fails_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    changed = {**uvicorn_fast.REQUIRED_METHODS, "_start_asgi_task": ("cycle", "app", "extra")}
    monkeypatch.setattr(uvicorn_fast, "REQUIRED_METHODS", changed)

    why = uvicorn_fast.probe()

    assert why is not None
    assert "_start_asgi_task" in why


async def test_a_failed_probe_falls_back_to_the_stock_protocol_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(uvicorn_fast, "_probed", ["HttpToolsProtocol has no no_such_attribute"])
    caplog.set_level(logging.WARNING, logger="spillway.api")

    async with in_process(_ok, head_timeout=5, body_timeout=5, fast_path=True) as (served, port):
        response = await _get(f"http://127.0.0.1:{port}/")

    assert response.status_code == 200
    assert not isinstance(served.config, uvicorn_fast.ServerConfig)
    assert served.config.http == "httptools"
    [warning] = _warnings(caplog)
    assert uvicorn.__version__ in warning
    assert "no_such_attribute" in warning


def test_fast_path_off_configures_the_stock_protocol_with_the_same_options(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="spillway.api")
    stock = server("a:app", host="127.0.0.1", port=1, workers=1, settings=Settings(fast_path=False))
    fast = server("a:app", host="127.0.0.1", port=1, workers=1, settings=Settings(fast_path=True))

    assert not stock.fast
    assert fast.fast is (uvicorn_fast.probe() is None)
    for option in ("loop", "ws", "lifespan", "proxy_headers", "timeout_graceful_shutdown"):
        assert getattr(stock.config, option) == getattr(fast.config, option)
    assert any("SPILLWAY_FAST_PATH is off" in w for w in _warnings(caplog))


async def test_a_server_with_the_fast_path_off_accepts_through_the_stock_protocol(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    api = ApiServer(redis_server.url, {"SPILLWAY_FAST_PATH": "0"})
    await asyncio.to_thread(api.start, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=10.0) as http:
            accepted = await http.post("/tasks", json={"type": "echo", "payload": {"n": 1}})
            # uvicorn's own protocol does not bound a head's size: the fast one answers 431.
            big = await http.get("/healthz", headers={"x-big": "a" * (HEAD_LIMIT + 1024)})
    finally:
        await asyncio.to_thread(api.stop)

    assert accepted.status_code == 202
    assert accepted.json()["status"] == "queued"
    assert big.status_code == 200
    warnings = [line for line in api.log().splitlines() if WARNING in line]
    assert len(warnings) == 1
    assert f"uvicorn {uvicorn.__version__}" in warnings[0]
    assert "SPILLWAY_FAST_PATH is off" in warnings[0]
