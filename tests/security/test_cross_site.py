"""Requests another site can make a browser send change nothing; the API's own clients still work.

Each hostile input here is listed with its answer in docs/security.md ("Cross-site requests and
framing"). The server is real (`tests.api.servers`), so accept requests go through the fast
protocol's direct route when it admits them, and through ASGI when it does not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
from tests.api.servers import ApiServer, drain, serving

from spillway import Settings, Spillway, TaskStatus
from spillway.api import create_app
from spillway.embedded import EmbeddedRedis

RESIZE = {"url": "https://example.com/a.png", "width": 2, "height": 3}
TASK = {"type": "resize", "payload": RESIZE}
EVIL = "http://evil.example"
BOUNDARY = "spillwayboundary"
#: What an HTML form can send without a preflight, each with the body a form would send.
FORMS = {
    "application/x-www-form-urlencoded": b"type=resize&payload=x",
    f"multipart/form-data; boundary={BOUNDARY}": (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="type"\r\n\r\nresize\r\n'
        f"--{BOUNDARY}--\r\n"
    ).encode(),
    # The classic trick: a text/plain form whose one field spells a JSON document.
    "text/plain": orjson.dumps(TASK),
}


@dataclass(frozen=True)
class Route:
    """A state-changing route, with a JSON body its own clients would send (or none)."""

    method: str
    path: str
    body: object = None


ROUTES = [
    Route("POST", "/tasks", TASK),
    Route("POST", "/process", RESIZE),
    Route("POST", "/tasks/batch", {"tasks": [TASK]}),
    Route("DELETE", "/tasks/{queued}"),
    Route("POST", "/dlq/{dead}/replay"),
    Route("POST", "/dashboard/replay/{dead}"),
    Route("POST", "/queues/default/pause"),
    Route("POST", "/dashboard/queues/default/pause"),
    Route("POST", "/tasks/cancel", {"queue": "default"}),
    Route("POST", "/dashboard/cancel", {"queue": "default"}),
]
IDS = [f"{r.method} {r.path}" for r in ROUTES]


@pytest.fixture(scope="module")
def server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """Open mode (no API keys), any Host: the default, and what `spillway dev` runs."""
    yield from serving(redis_server.url, tmp_path_factory.mktemp("cross-site"))


@pytest.fixture(scope="module")
def hosts_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    env = {"SPILLWAY_ALLOWED_HOSTS": "localhost, 127.0.0.1"}
    yield from serving(redis_server.url, tmp_path_factory.mktemp("hosts"), env)


@pytest.fixture
async def http(server: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


@dataclass
class World:
    """A dead letter and a queued task to aim at, and what the queues held before."""

    app: Spillway
    dead: str
    queued: str
    before: tuple[int, int, list[str]]

    def url(self, route: Route) -> str:
        return route.path.format(dead=self.dead, queued=self.queued)

    async def figures(self) -> tuple[int, int, list[str]]:
        """Tasks waiting or delayed, tasks dead, over every queue, and the paused queues."""
        stats = await self.app.stats()
        waiting = sum(q.backlog + q.delayed for q in stats.queues)
        return waiting, sum(q.dead for q in stats.queues), stats.paused

    async def assert_unchanged(self) -> None:
        assert (await self.app.get(self.dead)).status is TaskStatus.DEAD
        assert (await self.app.get(self.queued)).status is TaskStatus.QUEUED
        assert await self.figures() == self.before


@pytest.fixture
async def world(server: ApiServer) -> AsyncIterator[World]:
    app = server.spillway()
    try:  # closed even when the set-up fails: its connections must not outlive the test
        dead = await app.enqueue("explode", {"message": "target"})
        await drain(app, dead)  # not a burst: the other tests' delayed tasks stay waiting
        # Delayed an hour: no worker of this module's server runs it; it waits to be cancelled.
        queued = await app.enqueue("resize", RESIZE, delay=3600)
        # No queue paused: the refused pause routes must leave it so (the "works" tests pause).
        await app.resume("default")
        w = World(app, dead, queued, (0, 0, []))
        w.before = await w.figures()
        yield w
    finally:
        await app.close()


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == f"urn:spillway:problem:{slug}"


async def send(
    http: httpx.AsyncClient, route: Route, world: World, headers: dict[str, str]
) -> httpx.Response:
    """The route's own JSON call (bodiless if the route takes no body), with `headers`."""
    body = None
    if route.body is not None:
        body = orjson.dumps(route.body)
        headers = {**headers, "Content-Type": "application/json"}
    return await http.request(route.method, world.url(route), content=body, headers=headers)


@pytest.mark.parametrize("content_type", list(FORMS))
@pytest.mark.parametrize("route", ROUTES, ids=IDS)
async def test_a_form_post_changes_nothing_even_from_a_browser_that_names_no_origin(
    http: httpx.AsyncClient, world: World, route: Route, content_type: str
) -> None:
    headers = {"Content-Type": content_type}
    response = await http.request(
        route.method, world.url(route), content=FORMS[content_type], headers=headers
    )
    assert_problem(response, 415, "unsupported-media-type")
    await world.assert_unchanged()


@pytest.mark.parametrize("content_type", list(FORMS))
@pytest.mark.parametrize("route", ROUTES, ids=IDS)
async def test_a_cross_site_form_post_is_refused_for_its_origin(
    http: httpx.AsyncClient, world: World, route: Route, content_type: str
) -> None:
    headers = {"Content-Type": content_type, "Origin": EVIL, "Sec-Fetch-Site": "cross-site"}
    response = await http.request(
        route.method, world.url(route), content=FORMS[content_type], headers=headers
    )
    assert_problem(response, 403, "cross-site-request")
    await world.assert_unchanged()


@pytest.mark.parametrize(
    "marks",
    [
        {"Origin": EVIL},
        {"Origin": "null"},  # a sandboxed frame, or a page that hides its origin
        {"Origin": "http://127.0.0.1:1"},  # the same host, another port: another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain, or another port
    ],
    ids=["foreign", "null", "other-port", "cross-site", "same-site"],
)
@pytest.mark.parametrize("route", ROUTES, ids=IDS)
async def test_a_request_marked_as_from_another_site_is_refused(
    http: httpx.AsyncClient, world: World, route: Route, marks: dict[str, str]
) -> None:
    # Even with the JSON and the custom header a page could only send after a preflight.
    response = await send(http, route, world, {**marks, "X-Spillway-Dashboard": "1"})
    assert_problem(response, 403, "cross-site-request")
    await world.assert_unchanged()


@pytest.mark.parametrize(
    "path", ["/dlq/{dead}/replay", "/dashboard/replay/{dead}", "/dashboard/queues/default/pause"]
)
async def test_a_post_with_browser_credentials_must_show_it_is_no_simple_cross_site_request(
    http: httpx.AsyncClient, world: World, path: str
) -> None:
    url = path.format(dead=world.dead)
    # A browser's own Basic credentials prove nothing: it sends them by itself.
    refused = await http.post(url, headers={"Authorization": "Basic b3BzOmtleQ=="})
    assert_problem(refused, 400, "bad-request")
    await world.assert_unchanged()
    done = await http.post(url, headers={"X-Spillway-Dashboard": "1"})
    assert done.status_code in (200, 202)
    if "replay" in path:
        assert (await world.app.get(world.dead)).status is TaskStatus.QUEUED
    else:
        assert await world.app.paused() == ["default"]


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
async def test_same_origin_json_requests_still_work(
    server: ApiServer, http: httpx.AsyncClient, world: World, route: Route
) -> None:
    marks = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
    response = await send(http, route, world, marks)
    assert response.status_code in (200, 202), response.text


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
async def test_clients_that_are_not_browsers_still_work(
    http: httpx.AsyncClient, world: World, route: Route
) -> None:
    response = await send(http, route, world, {})  # bodiless ones as `curl -X POST` sends
    assert response.status_code in (200, 202), response.text


async def test_a_host_the_server_does_not_serve_is_refused(hosts_server: ApiServer) -> None:
    app = hosts_server.spillway()
    try:
        async with httpx.AsyncClient(base_url=hosts_server.url, timeout=10) as http:
            rebound = {"Host": f"evil.example:{hosts_server.port}"}
            for method, path in [("GET", "/stats"), ("GET", "/dashboard"), ("POST", "/tasks")]:
                response = await http.request(method, path, json=TASK, headers=rebound)
                assert_problem(response, 421, "host-not-allowed")
            written = sum(q.backlog + q.delayed for q in (await app.stats()).queues)
            assert written == 0  # the POST wrote nothing
            assert (await http.get("/healthz", headers=rebound)).status_code == 200
            local = {"Host": f"localhost:{hosts_server.port}"}
            assert (await http.post("/tasks", json=TASK, headers=local)).status_code == 202
            assert (await http.get("/stats")).status_code == 200  # 127.0.0.1
    finally:
        await app.close()


async def test_the_direct_route_admits_only_what_asgi_admits(settings: Settings) -> None:
    api = create_app(Spillway(settings.model_copy(update={"allowed_hosts": ["localhost"]})))

    def scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
        host = (b"host", b"localhost:8000")
        return {"type": "http", "method": "POST", "path": "/tasks", "headers": [host, *headers]}

    direct = api.direct_route  # type: ignore[attr-defined]
    json = (b"content-type", b"application/json")
    assert direct(scope(json)) is not None
    assert direct(scope(json, (b"origin", b"http://localhost:8000"))) is not None
    for hostile in [
        [json, (b"origin", EVIL.encode())],
        [json, (b"sec-fetch-site", b"cross-site")],
        [(b"content-type", b"text/plain")],
    ]:
        assert direct(scope(*hostile)) is None  # left to ASGI, which refuses it
    rebound = {
        "type": "http",
        "method": "POST",
        "path": "/tasks",
        "headers": [(b"host", b"evil"), json],
    }
    assert direct(rebound) is None


#: Two values of one header, the first a harmless one: a proxy that reads the first and a
#: check that read the last would disagree.
REPEATED = {
    "Content-Type": ["application/json", "text/plain"],
    "Origin": ["http://127.0.0.1", EVIL],
    "Sec-Fetch-Site": ["same-origin", "cross-site"],
    "Idempotency-Key": ["one", "two"],
}


@pytest.mark.parametrize("name", list(REPEATED))
@pytest.mark.parametrize("route", ROUTES[:3], ids=IDS[:3])
async def test_a_header_a_decision_reads_may_not_come_twice(
    http: httpx.AsyncClient, world: World, route: Route, name: str
) -> None:
    headers = [(name, value) for value in REPEATED[name]]
    if name != "Content-Type":
        headers.append(("Content-Type", "application/json"))
    body = orjson.dumps(route.body)
    response = await http.request(route.method, world.url(route), content=body, headers=headers)
    assert_problem(response, 400, "bad-request")
    assert f"{name} is sent more than once" in response.json()["detail"]
    await world.assert_unchanged()


async def _chunks() -> AsyncIterator[bytes]:
    yield orjson.dumps(TASK)


async def test_answers_carry_security_headers(server: ApiServer, http: httpx.AsyncClient) -> None:
    accepted = await http.post("/tasks", json=TASK)  # the direct route (on the fast protocol)
    # A chunked body is never the direct route's: accepted through ASGI.
    chunked = await http.post(
        "/tasks", content=_chunks(), headers={"Content-Type": "application/json"}
    )
    refused = await http.post("/tasks", json=TASK, headers={"Origin": EVIL})  # ASGI
    stats = await http.get("/stats")  # FastAPI's routing
    assert accepted.status_code == chunked.status_code == 202, chunked.text
    for response in (accepted, chunked, refused, stats):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    for path in ("/dashboard", "/dashboard/static/dashboard.js", "/docs", "/docs/static/docs.js"):
        response = await http.get(path)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        for directive in ("default-src 'self'", "frame-ancestors 'none'", "base-uri 'none'",
                          "form-action 'self'"):  # fmt: skip
            assert directive in policy, (path, policy)
        assert "unsafe-inline" not in policy
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-content-type-options"] == "nosniff"
