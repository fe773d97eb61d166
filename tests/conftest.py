"""Fixtures shared by the whole suite, one section per concern."""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FunctionType
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from tests import browser, clitools, procs
from tests.api import servers
from tests.chaos import harness
from tests.chaos.report import ROWS, table
from tests.clients import ready_client
from tests.embedded_cluster import EmbeddedCluster
from tests.procs import settings_env

from spillway import Settings, Spillway
from spillway.api.uvicorn_fast import probe
from spillway.embedded import EmbeddedRedis
from spillway.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent

# --- Redis -------------------------------------------------------------------------------------
# One throw-away server per session, on a free port (never 6379, never a server someone else
# runs). Tests isolate by key prefix instead of flushing, so they can share it.


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """The session's embedded Redis server."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedCluster]:
    """A local Redis Cluster of three primaries, each with a replica (started on first use)."""
    with EmbeddedCluster(primaries=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """Where the engine under test keeps its data: the session's single server, or with
    SPILLWAY_TEST_CLUSTER=1 (`make test-cluster`) the local cluster."""
    if os.environ.get("SPILLWAY_TEST_CLUSTER") == "1":
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def key_prefix() -> str:
    """A key prefix unique to this test."""
    return f"t{uuid.uuid4().hex[:8]}"


# --- The engine --------------------------------------------------------------------------------
# Each test gets its own app under its own key prefix, with short timeouts so recovery paths
# (reclaim after the visibility timeout, retry backoff) run in well under a second.


@pytest.fixture
def settings(redis_url: str, key_prefix: str) -> Settings:
    """Settings for one test: a private prefix and quick recovery timings."""
    return Settings(
        redis_url=redis_url,
        prefix=key_prefix,
        shards=int(os.environ.get("SPILLWAY_TEST_SHARDS", "1")),
        visibility_timeout=1.0,
        retry_base=0.05,
        retry_cap=0.2,
        heartbeat_interval=0.5,
        block_ms=100,
        shutdown_grace=5.0,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Spillway]:
    """A fresh application for the test to declare its tasks on."""
    application = Spillway(settings)
    yield application
    await application.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client (a cluster client on a cluster), to look at what Spillway wrote."""
    client = await ready_client(redis_url, timeout=5, max_connections=16)
    yield client
    if isinstance(client, aioredis.Redis):
        await client.aclose(close_connection_pool=True)
    else:
        await client.aclose()


@pytest.fixture
def worker_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a worker subprocess use this test's settings."""
    env = dict(os.environ) | settings_env(settings)
    env["PYTHONPATH"] = str(ROOT)
    return env


# --- Markers -----------------------------------------------------------------------------------
# `make test-fast` leaves out the tests that drive a browser or start a process of Spillway's
# own. They are marked here, from what each test and its fixtures use, so test files carry no
# marker of their own and a new test that spawns a worker is marked without anyone remembering.

# What starts a process: the `spillway` command as a child, an API server, the supervisor, a
# chaos stack's API and workers. (Embedded Redis servers do not count: nearly every test uses one.)
_STARTERS: tuple[object, ...] = (
    procs.spawn,
    clitools.spawn,
    servers.ApiServer,
    servers.serving,
    Supervisor,
    harness.Child,
)
_TESTS = Path(__file__).resolve().parent


def _ours(obj: object) -> bool:
    """Whether `obj` is a function or class written under tests/ (whose code we follow)."""
    try:
        source = inspect.getsourcefile(obj)  # type: ignore[arg-type]
    except TypeError:
        return False
    return source is not None and Path(source).resolve().is_relative_to(_TESTS)


def _reaches(roots: list[object], targets: tuple[object, ...]) -> bool:
    """Whether calling `roots` can reach one of `targets`: follows the global names their code
    uses, through the functions and classes of tests/ (helpers, fixtures, their classes)."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if any(obj is target for target in targets):
            return True
        if id(obj) in seen or not _ours(obj):
            continue
        seen.add(id(obj))
        if isinstance(obj, type):
            # Methods, and the functions behind properties, static and class methods.
            for member in vars(obj).values():
                todo += [member, getattr(member, "fget", None), getattr(member, "__func__", None)]
        elif isinstance(obj, FunctionType):
            codes, names = [obj.__code__], set[str]()
            while codes:
                code = codes.pop()
                names.update(code.co_names)
                codes += [c for c in code.co_consts if inspect.iscode(c)]
            todo += [obj.__globals__[n] for n in names if n in obj.__globals__]
    return False


def stock_reason() -> str | None:
    """Why the servers of this run use uvicorn's stock protocol, or None if they use the
    fenced one (`spillway.api.uvicorn_fast`), as `spillway.api.serve.server` decides."""
    return probe() if Settings().fast_path else "SPILLWAY_FAST_PATH is off"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("fast_protocol") is not None and (why := stock_reason()):
        pytest.skip(f"needs the fast protocol; the stock protocol serves ({why})")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `browser` every test of a module that drives one, `subprocess` every test that
    (itself or through a fixture) starts a process."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        module = vars(item.module) if item.module else {}
        if any(v is browser or v is browser.chromium for v in module.values()):
            item.add_marker(pytest.mark.browser)
        # pytest has no public way to a test's fixture functions at collection time.
        fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        if _reaches([inspect.unwrap(f) for f in (item.function, *fixtures)], _STARTERS):
            item.add_marker(pytest.mark.subprocess)


# --- the chaos scenarios' table ----------------------------------------------------------------
# Here, not in tests/chaos/conftest.py: with pytest-xdist the process that prints it collects
# no tests, so it loads no conftest below this one.

_ROW = "chaos scenario row"
_sent = 0  # of ROWS, those this test process has passed on with their reports


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """In a test process of pytest-xdist, the rows a test recorded go with its report to the
    process that prints the table (its own ROWS would stay empty)."""
    global _sent
    report = yield
    if hasattr(item.config, "workerinput"):
        report.user_properties += [(_ROW, row) for row in ROWS[_sent:]]
        _sent = len(ROWS)
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if getattr(report, "node", None) is not None:  # from a test process, here where it prints
        ROWS.extend(cast(dict[str, Any], r) for name, r in report.user_properties if name == _ROW)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ROWS:
        terminalreporter.section("chaos scenarios")
        terminalreporter.write_line(table(ROWS))
        for row in ROWS:
            for failure in row["failed"]:
                terminalreporter.write_line(f"{row['scenario']} [{row['size']}]: {failure}")
