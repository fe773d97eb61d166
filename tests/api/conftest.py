"""Fixtures of the API tests: real servers (see `servers`), clients and the in-process app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from tests.api.servers import ApiServer, serving

from spillway import Spillway
from spillway.embedded import EmbeddedRedis

#: The admin key of `secured_server`.
ADMIN_KEY = "admin-key"


@pytest.fixture(scope="session")
def api_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """The session's API server, with default limits and a short Redis timeout."""
    yield from serving(
        redis_server.url, tmp_path_factory.mktemp("api"), {"SPILLWAY_REDIS_TIMEOUT": "0.25"}
    )


@pytest.fixture(scope="session")
def secured_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """An API server that requires one of two client keys, or the admin key."""
    env = {"SPILLWAY_API_KEYS": "key-one,key-two", "SPILLWAY_ADMIN_KEYS": ADMIN_KEY}
    yield from serving(redis_server.url, tmp_path_factory.mktemp("api"), env)


@pytest.fixture(scope="session")
def tight_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """An API server with a backlog of 3 tasks and batches of at most 5."""
    env = {"SPILLWAY_BACKLOG_LIMIT": "3", "SPILLWAY_MAX_BATCH": "5"}
    yield from serving(redis_server.url, tmp_path_factory.mktemp("api"), env)


@pytest.fixture
async def http(api_server: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the session's API server."""
    async with httpx.AsyncClient(base_url=api_server.url, timeout=10.0) as client:
        yield client


@pytest.fixture
async def spillway(api_server: ApiServer) -> AsyncIterator[Spillway]:
    """The session server's application, in this process."""
    app = api_server.spillway()
    try:
        yield app
    finally:
        await app.close()
