"""Prometheus metrics, scraped from the real endpoints while tasks flow.

`spillway api --workers 2` serves ``/metrics`` (two uvicorn processes behind one port, so the
counts only add up if the multiprocess directory works); `spillway worker --processes 2
--metrics-port` serves the workers' figures from their supervisor.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.api.sample_app import build
from tests.api.servers import free_port
from tests.clitools import until
from tests.procs import ROOT, Proc, output, settings_env, spawn, stop

from spillway import Settings, Spillway
from spillway.embedded import EmbeddedRedis

APP = "tests.api.server_app:app"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled series not created yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    api_port: int
    worker_port: int
    procs: list[Proc]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start_api(self) -> None:
        self.procs.append(
            spawn(self.env, "api", APP, "--workers", "2", "--port", str(self.api_port))
        )

    def start_workers(self) -> None:
        self.procs.append(
            spawn(
                self.env, "worker", APP, "--processes", "2", "--metrics-port", str(self.worker_port)
            )
        )

    async def scrape(self, url: str) -> Samples:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(url)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return parse(response.text)

    async def wait_until_up(self, url: str) -> None:
        async def up() -> bool:
            try:
                async with httpx.AsyncClient(timeout=1) as client:
                    return (await client.get(url)).status_code == 200
            except httpx.TransportError:
                return False

        logs = "\n".join(output(p) for p in self.procs)
        await until(up, timeout=30, what=f"{url} to answer; logs:\n{logs}")


@pytest.fixture
def stack(
    redis_server: EmbeddedRedis, key_prefix: str, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    # Parametrized indirectly with SPILLWAY_FAST_PATH's value; else as the environment says.
    fast: bool | None = getattr(request, "param", None)
    settings = Settings(
        redis_url=redis_server.url,
        prefix=key_prefix,
        visibility_timeout=1.0,
        retry_base=0.05,
        retry_cap=0.1,
        heartbeat_interval=0.5,
        block_ms=100,
        shutdown_grace=2.0,
    )
    if fast is not None:
        settings = settings.model_copy(update={"fast_path": fast})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPILLWAY_", "PROMETHEUS_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["SPILLWAY_DEFAULT_TASK_TYPE"] = "resize"
    env |= settings_env(settings)
    s = Stack(env, settings, free_port(), free_port(), [])
    try:
        yield s
    finally:
        for proc in s.procs:
            stop(proc, timeout=15)


@pytest.fixture
async def app(stack: Stack) -> AsyncIterator[Spillway]:
    application = build(stack.settings)
    yield application
    await application.close()


async def submit(client: httpx.AsyncClient, body: dict[str, object]) -> httpx.Response:
    # A new connection per request, so both uvicorn processes get some of them.
    return await client.post("/tasks", json=body, headers={"Connection": "close"})


@pytest.mark.slow
async def test_every_metric_moves_as_tasks_flow(stack: Stack, app: Spillway) -> None:
    stack.start_api()
    await stack.wait_until_up(f"{stack.api}/healthz")
    before = await stack.scrape(f"{stack.api}/metrics")
    assert value(before, "spillway_broker_up") == 1
    assert value(before, "spillway_workers_live") == 0

    resize = {"url": "https://example.com/a.png", "width": 2, "height": 3}
    async with httpx.AsyncClient(base_url=stack.api, timeout=10) as client:
        ok = [(await submit(client, {"type": "resize", "payload": resize})) for _ in range(3)]
        ok.append(await submit(client, {"type": "echo", "payload": {"n": 1}}))
        boom = await submit(
            client, {"type": "explode", "payload": {"message": "x"}, "max_retries": 2}
        )
        later = await submit(client, {"type": "resize", "payload": resize, "delay_s": 600})
        invalid = await submit(client, {"type": "resize", "payload": {"width": -1}})
        batch = await client.post(
            "/tasks/batch",
            json={"tasks": [{"type": "echo", "payload": {}}, {"type": "nope", "payload": {}}]},
        )
    assert [r.status_code for r in [*ok, boom, later]] == [202] * 6
    assert invalid.status_code == 422
    assert batch.json()["accepted"] == 1

    # One delivery that nobody acknowledges: pending until the workers reclaim it (the lost
    # delivery was the explode task's first attempt; the workers run its second and third).
    stream = app.broker.core.streams(["risky"])
    assert len(await app.broker.work.read("probe", stream, 1, None)) == 1

    accepted = await stack.scrape(f"{stack.api}/metrics")
    assert value(accepted, "spillway_tasks_accepted_total", type="resize") == 4
    assert value(accepted, "spillway_tasks_accepted_total", type="echo") == 2
    assert value(accepted, "spillway_tasks_accepted_total", type="explode") == 1
    assert value(accepted, "spillway_tasks_refused_total", reason="payload-invalid") == 1
    assert value(accepted, "spillway_tasks_refused_total", reason="unknown-task-type") == 1
    assert value(accepted, "spillway_accept_duration_seconds_count", route="/tasks") == 7
    assert value(accepted, "spillway_accept_duration_seconds_count", route="/tasks/batch") == 1
    assert value(accepted, "spillway_queue_backlog", queue="default") == 5
    assert value(accepted, "spillway_queue_backlog", queue="risky") == 1
    assert value(accepted, "spillway_queue_pending", queue="risky") == 1
    assert value(accepted, "spillway_queue_delayed", queue="default") == 1
    assert value(accepted, "spillway_queue_dead_letters", queue="risky") == 0

    stack.start_workers()
    await stack.wait_until_up(f"http://127.0.0.1:{stack.worker_port}/metrics")
    task_ids = [r.json()["task_id"] for r in ok] + [boom.json()["task_id"]]
    for task_id in task_ids:
        record = await app.wait(task_id, 30)
        assert record.terminal, record

    async def workers_scraped() -> bool:
        # Counters are written before the outcome's slot is freed; allow that instant.
        figures = await stack.scrape(f"http://127.0.0.1:{stack.worker_port}/metrics")
        return value(figures, "spillway_tasks_dead_lettered_total", type="explode") == 1

    await until(workers_scraped, what="the dead letter to be counted")
    worker = await stack.scrape(f"http://127.0.0.1:{stack.worker_port}/metrics")
    assert value(worker, "spillway_tasks_started_total", type="resize") == 3
    assert value(worker, "spillway_tasks_succeeded_total", type="resize") == 3
    assert value(worker, "spillway_tasks_succeeded_total", type="echo") == 2
    assert value(worker, "spillway_tasks_started_total", type="explode") == 2
    assert value(worker, "spillway_tasks_retried_total", type="explode") == 1
    assert value(worker, "spillway_tasks_failed_total", type="explode") == 2
    assert value(worker, "spillway_task_run_duration_seconds_count", type="resize") == 3
    assert value(worker, "spillway_task_queue_wait_seconds_count", type="resize") == 3

    async def both_workers_live() -> bool:
        # One process may have run every task before the other's first heartbeat (seen on a
        # slow machine in a fresh-clone CI run): wait for both to register, not for the tasks.
        figures = await stack.scrape(f"{stack.api}/metrics")
        return value(figures, "spillway_workers_live") == 2

    await until(both_workers_live, what="both worker processes to register")
    after = await stack.scrape(f"{stack.api}/metrics")
    assert value(after, "spillway_queue_backlog", queue="default") == 0
    assert value(after, "spillway_queue_pending", queue="risky") == 0
    assert value(after, "spillway_queue_dead_letters", queue="risky") == 1
    assert value(after, "spillway_queue_delayed", queue="default") == 1
    assert value(after, "spillway_workers_live") == 2
    stored = "spillway_outcomes_stored_total"
    assert value(after, stored, type="resize", outcome="succeeded") == 3
    assert value(after, stored, type="explode", outcome="dead_lettered") == 1


@pytest.mark.slow
async def test_counts_add_up_across_api_processes(stack: Stack) -> None:
    stack.start_api()
    await stack.wait_until_up(f"{stack.api}/healthz")
    async with httpx.AsyncClient(base_url=stack.api, timeout=10) as client:
        for _ in range(40):
            response = await submit(client, {"type": "echo", "payload": {}})
            assert response.status_code == 202
    # Whichever process answers the scrape, it reports both processes' counts.
    for _ in range(6):
        figures = await stack.scrape(f"{stack.api}/metrics")
        assert value(figures, "spillway_tasks_accepted_total", type="echo") == 40
        assert value(figures, "spillway_accept_duration_seconds_count", route="/tasks") == 40


@pytest.mark.slow
@pytest.mark.parametrize("stack", [False], indirect=True)
async def test_without_the_fast_path_counts_add_up_through_the_public_multiprocess_mode(
    stack: Stack,
) -> None:
    # prometheus-client's own route: each recording process finds the directory in its
    # environment when it starts (uvicorn's spawned servers, the supervisor's workers).
    stack.start_api()
    await stack.wait_until_up(f"{stack.api}/healthz")
    stack.start_workers()
    workers = f"http://127.0.0.1:{stack.worker_port}/metrics"
    await stack.wait_until_up(workers)
    async with httpx.AsyncClient(base_url=stack.api, timeout=10) as client:
        for _ in range(20):
            response = await submit(client, {"type": "echo", "payload": {}})
            assert response.status_code == 202
    for _ in range(4):
        figures = await stack.scrape(f"{stack.api}/metrics")
        assert value(figures, "spillway_tasks_accepted_total", type="echo") == 20

    async def all_run() -> bool:
        figures = await stack.scrape(workers)
        return value(figures, "spillway_tasks_succeeded_total", type="echo") == 20

    await until(all_run, timeout=30, what="the workers to count 20 tasks")


def _listening_addresses(port: int) -> set[str]:
    """The local addresses sockets listen on at `port` (Linux: /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    # The kernel writes each 32-bit word in host (little-endian) order.
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
                    found.add(socket.inet_ntop(family, words))
    return found


@pytest.mark.slow
async def test_the_worker_metrics_port_listens_on_loopback_and_wants_a_key_when_keys_are_set(
    stack: Stack,
) -> None:
    env = stack.env | {
        "SPILLWAY_API_KEYS": "client-key",
        "SPILLWAY_ADMIN_KEYS": "scrape-key,other-key",
    }
    stack.procs.append(
        spawn(env, "worker", APP, "--processes", "1", "--metrics-port", str(stack.worker_port))
    )
    url = f"http://127.0.0.1:{stack.worker_port}/metrics"

    async def answering() -> bool:
        try:
            async with httpx.AsyncClient(timeout=1) as client:
                await client.get(url)
        except httpx.TransportError:
            return False
        return True

    await until(answering, timeout=30, what=f"{url} to answer: {output(stack.procs[0])}")

    assert _listening_addresses(stack.worker_port) == {"127.0.0.1"}
    async with httpx.AsyncClient(timeout=5) as client:
        anonymous = await client.get(url)
        wrong = await client.get(url, headers={"Authorization": "Bearer nope"})
        client_key = await client.get(url, headers={"Authorization": "Bearer client-key"})
        bearer = await client.get(url, headers={"Authorization": "Bearer scrape-key"})
        header = await client.get(url, headers={"X-API-Key": "other-key"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401
    assert client_key.status_code == 401  # a valid key, but a client's: metrics are an admin's
    assert b"scrape-key" not in anonymous.content + wrong.content
    assert bearer.status_code == 200
    assert bearer.headers["content-type"].startswith("text/plain")
    assert header.status_code == 200


@pytest.mark.slow
async def test_the_worker_metrics_host_can_be_chosen(stack: Stack) -> None:
    # Without keys the port is open, on the address asked for (every interface here).
    env = stack.env | {"SPILLWAY_METRICS_HOST": "0.0.0.0"}  # noqa: S104 - what is tested
    stack.procs.append(
        spawn(env, "worker", APP, "--processes", "1", "--metrics-port", str(stack.worker_port))
    )
    await stack.wait_until_up(f"http://127.0.0.1:{stack.worker_port}/metrics")

    assert _listening_addresses(stack.worker_port) == {"0.0.0.0"}  # noqa: S104
