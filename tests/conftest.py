"""Fixtures shared by the whole suite, one section per concern."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from spillway.embedded import EmbeddedRedis

# --- Redis -------------------------------------------------------------------------------------
# One throw-away server per session, on a free port (never 6379, never a server someone else
# runs). Tests isolate by key prefix instead of flushing, so they can share it.


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """The session's embedded Redis server."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the session's Redis server."""
    return redis_server.url


@pytest.fixture
def key_prefix() -> str:
    """A key prefix unique to this test."""
    return f"t{uuid.uuid4().hex[:8]}"
