"""Issue 22, part 1: completion webhooks, delivered by the workers to a real HTTP receiver.

The receiver (`tests.receivers`) listens on 127.0.0.1, which the settings here allow
explicitly (SPILLWAY_CALLBACK_ALLOW_NETWORKS); the refusal tests use the defaults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from tests.engine import Item, own_server
from tests.receivers import Receiver, receiving

from spillway import PayloadInvalid, Settings, Spillway, Worker
from spillway.api.app import create_app
from spillway.app import EnqueueItem
from spillway.broker.callbacks import Settled
from spillway.deliverer import Deliverer
from spillway.records import Callback
from spillway.webhooks import SignatureInvalid, sign, verify

SECRET = "whsec-test-secret"  # noqa: S105 - a test key


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "callback_allow_networks": ["127.0.0.0/8"],
            "callback_secret": SecretStr(SECRET),
            "callback_timeout": 1.0,
        }
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as r:
        yield r


def hooked(settings: Settings) -> Spillway:
    app = Spillway(settings)

    @app.task(max_retries=0)
    async def job(item: Item) -> int:
        if item.n < 0:
            raise ValueError("negative")
        return item.n * 2

    return app


async def callback_of(app: Spillway, task_id: str) -> Callback:
    callback = (await app.get(task_id)).callback
    assert callback is not None
    return callback


async def burst(app: Spillway) -> None:
    await asyncio.wait_for(Worker(app, burst=True).run(), 20)


async def test_a_finished_task_posts_its_resource_signed_and_its_record_says_delivered(
    hook_settings: Settings, receiver: Receiver
) -> None:
    app = hooked(hook_settings)
    try:
        task_id = await app.enqueue("job", {"n": 21}, callback_url=receiver.url)
        assert (await callback_of(app, task_id)).status == "pending"
        await burst(app)
        (hook,) = receiver.received
        assert (hook.method, hook.path) == ("POST", "/hook")
        verify(hook.body, hook.headers["spillway-signature"], SECRET)  # raises if wrong
        doc = orjson.loads(hook.body)
        assert (doc["id"], doc["status"], doc["result"]) == (task_id, "succeeded", 42)
        assert hook.headers["spillway-delivery"] == f"{task_id}.1"
        assert hook.headers["spillway-event"] == "task.succeeded"
        assert hook.headers["content-type"] == "application/json"
        assert hook.headers["host"] == f"127.0.0.1:{receiver.port}"
        callback = await callback_of(app, task_id)
        assert (callback.status, callback.attempts, callback.last_error) == ("delivered", 1, None)
        assert await app.broker.callbacks.due() == 0
    finally:
        await app.close()


async def test_a_batch_stores_each_tasks_own_callback_and_a_batch_of_none_stores_none(
    hook_settings: Settings, receiver: Receiver
) -> None:
    app = hooked(hook_settings)
    try:
        # One batch where only some tasks carry a callback (its script call takes the two
        # optional arguments of every task), and one where none does (it takes neither).
        mixed = await app.enqueue_many([
            EnqueueItem("job", {"n": 1}, callback_url=receiver.url),
            EnqueueItem("job", {"n": 2}),
            EnqueueItem("job", {"n": 3}, callback_url=receiver.url + "?again"),
        ])  # fmt: skip
        plain = await app.enqueue_many([EnqueueItem("job", {"n": n}) for n in range(4, 7)])
        records = [await app.get(str(r.task_id)) for r in mixed + plain]
    finally:
        await app.close()
    urls = [r.callback.url if r.callback else None for r in records]
    assert urls == [receiver.url, None, receiver.url + "?again", None, None, None]
    assert [r.payload for r in records] == [{"n": n} for n in range(1, 7)]


async def test_every_terminal_status_sends_its_webhook_and_a_type_default_applies(
    hook_settings: Settings, receiver: Receiver
) -> None:
    app = Spillway(hook_settings)

    @app.task(max_retries=0, callback_url=receiver.url)
    async def job(item: Item) -> int:
        raise ValueError("boom")

    try:
        dead = await app.enqueue("job", {"n": 1})
        cancelled = await app.enqueue("job", {"n": 2}, delay=3600)
        await app.cancel(cancelled)  # cancel.lua ends it while it waits
        expired = await app.enqueue("job", {"n": 3}, delay=0.05, expires=0.1)
        await asyncio.sleep(0.15)  # past its expiry before any worker starts it
        await burst(app)
        await Deliverer(app).round()
        events = {
            orjson.loads(h.body)["id"]: h.headers["spillway-event"] for h in receiver.received
        }
        assert events == {
            dead: "task.dead",
            cancelled: "task.cancelled",
            expired: "task.expired",
        }
    finally:
        await app.close()


async def test_a_failing_receiver_is_retried_with_backoff_until_it_answers_2xx(
    hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.answers = [500, (302, {"location": "http://127.0.0.1:9/elsewhere"}), "hang"]
    app = hooked(hook_settings)
    try:
        task_id = await app.enqueue("job", {"n": 1}, callback_url=receiver.url)
        await burst(app)  # the first try: 500
        deliverer = Deliverer(app)
        deliverer.retry_base = 0.05
        errors: list[str] = []
        while len(receiver.received) < 4:  # a 302 (not followed), a hang (timed out), a 200
            await deliverer.round()
            callback = await callback_of(app, task_id)
            if callback.last_error and (not errors or errors[-1] != callback.last_error):
                errors.append(callback.last_error)
            await asyncio.sleep(0.02)
        await deliverer.close()
        assert errors[:2] == ["HTTP 500", "HTTP 302"], errors
        assert len(errors) == 3, errors
        assert "timeout" in errors[2].lower(), errors
        assert [r.path for r in receiver.received] == ["/hook"] * 4  # the redirect not followed
        callback = await callback_of(app, task_id)
        assert (callback.status, callback.attempts) == ("delivered", 4)
        hooks = (await app.stats()).callbacks  # what /stats, the CLI and the dashboard show
        assert (hooks.due, hooks.delivered, hooks.retried, hooks.failed) == (0, 1, 3, 0)
        deliveries = [r.headers["spillway-delivery"] for r in receiver.received]
        assert deliveries == [f"{task_id}.{n}" for n in (1, 2, 3, 4)]
    finally:
        await app.close()


async def test_a_webhook_that_keeps_failing_is_recorded_failed_after_its_retry_window(
    hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.answers = [503] * 10
    app = hooked(hook_settings.model_copy(update={"callback_retry_for": 0.5}))
    try:
        task_id = await app.enqueue("job", {"n": 1}, callback_url=receiver.url)
        await burst(app)
        callback = await callback_of(app, task_id)
        # The first retry (after about a second) would fall past the window: failed at once.
        assert (callback.status, callback.attempts, callback.last_error) == (
            "failed",
            1,
            "HTTP 503",
        )
        assert await app.broker.callbacks.due() == 0
    finally:
        await app.close()


async def test_a_delivery_cut_short_by_a_dead_worker_is_made_by_another_once_its_lease_ends(
    hook_settings: Settings, receiver: Receiver
) -> None:
    app = hooked(hook_settings)
    try:
        task_id = await app.enqueue("job", {"n": 1}, callback_url=receiver.url)
        gone = Deliverer(app, "gone")
        gone.round = _never  # type: ignore[method-assign]  # its burst flush does nothing
        worker = Worker(app, burst=True)
        worker._deliverer = gone
        await asyncio.wait_for(worker.run(), 20)
        # The worker that dies mid-delivery: it claimed the webhook, then nothing.
        shard = app.broker.keys.for_task(task_id)
        (claim,) = await app.broker.callbacks.claim(shard, "gone", limit=10, lease_ms=300)
        survivor = Deliverer(app, "survivor")
        assert await survivor.round() == 0  # leased: nobody else takes it yet
        started = time.monotonic()
        while not await survivor.round():
            assert time.monotonic() - started < 5, "the lease never ran out"
            await asyncio.sleep(0.05)
        await survivor.close()
        assert len(receiver.received) == 1
        # The dead worker's late word changes nothing: its claim is no longer the record's.
        await app.broker.callbacks.settle([Settled(claim, "failed", 9, "late")])
        callback = await callback_of(app, task_id)
        assert (callback.status, callback.attempts) == ("delivered", 1)
    finally:
        await app.close()


async def test_a_worker_stopped_mid_delivery_finishes_it_before_leaving(
    hook_settings: Settings, receiver: Receiver
) -> None:
    # The race CI met: the worker's deliverer had claimed the webhook when the worker stopped.
    # Cancelled mid-round, the claim waited out its lease (31 s) and the record said pending.
    receiver.answers = ["slow"]
    app = hooked(hook_settings)
    try:
        task_id = await app.enqueue("job", {"n": 1}, callback_url=receiver.url)
        worker = Worker(app)
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(receiver.arrived.wait(), 10)  # the POST is in flight
        worker.stop()
        await asyncio.wait_for(running, 20)
        callback = await callback_of(app, task_id)
        assert (callback.status, callback.attempts, callback.last_error) == ("delivered", 1, None)
        assert len(receiver.received) == 1
    finally:
        await app.close()


async def _never() -> int:
    return 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "ftp://example.com/hook",
        "http://user:pass@example.com/hook",
        "https:///nohost",
        "http://example.com/" + "a" * 2100,
        "http://exa mple.com/",
        "http://bücher.example/hook",
    ],
)
async def test_a_callback_url_to_a_private_address_or_of_another_kind_is_refused_at_enqueue(
    settings: Settings, url: str
) -> None:
    app = hooked(settings.model_copy(update={"callback_secret": SecretStr(SECRET)}))
    try:
        with pytest.raises(PayloadInvalid) as refused:
            await app.enqueue("job", {"n": 1}, callback_url=url)
        assert refused.value.errors[0]["loc"] == ["callback_url"]
        assert (await app.stats()).queues[0].backlog == 0
    finally:
        await app.close()


async def test_a_host_name_resolving_to_a_private_address_is_refused_at_delivery(
    settings: Settings, receiver: Receiver, redis: aioredis.Redis
) -> None:
    app = hooked(settings.model_copy(update={"callback_secret": SecretStr(SECRET)}))
    try:
        # Accepted (a name is resolved only when delivering: DNS may change), then refused.
        task_id = await app.enqueue(
            "job", {"n": 1}, callback_url=f"http://localhost:{receiver.port}/hook"
        )
        await burst(app)
        # A record changed in Redis to point inside the network is checked again, too.
        other = await app.enqueue("job", {"n": 2}, callback_url="https://example.com/hook")
        record_key = app.broker.keys.for_task(other).task(other)
        await redis.hset(record_key, "callback", "http://169.254.169.254/")
        await burst(app)
        for tid, why in ((task_id, "loopback"), (other, "link-local")):
            callback = await callback_of(app, tid)
            assert callback.status == "failed"
            assert callback.last_error is not None
            assert callback.last_error.startswith("refused:")
            assert why in callback.last_error
        assert receiver.received == []
    finally:
        await app.close()


async def test_the_api_takes_callback_url_and_shows_the_delivery(
    hook_settings: Settings, receiver: Receiver
) -> None:
    app = hooked(hook_settings)
    try:
        transport = httpx.ASGITransport(app=create_app(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            body: dict[str, Any] = {"type": "job", "payload": {"n": 2}}
            refused = await http.post("/tasks", json={**body, "callback_url": "http://10.0.0.1/"})
            assert refused.status_code == 422, refused.text
            assert "callback_url" in refused.text
            accepted = await http.post("/tasks", json={**body, "callback_url": receiver.url})
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["task_id"]
            await burst(app)
            doc = (await http.get(f"/tasks/{task_id}")).json()
            assert doc["callback"]["url"] == receiver.url
            assert doc["callback"]["status"] == "delivered"
            assert doc["callback"]["attempts"] == 1
    finally:
        await app.close()


def test_verify_refuses_a_wrong_secret_a_changed_body_an_old_signature_and_no_header() -> None:
    body = b'{"id":"x"}'
    now = int(time.time())
    header = sign(SECRET, now, body)
    verify(body, header, SECRET)
    verify(body, f"{header},v1={'0' * 64}", SECRET)  # another secret's signature beside it
    for bad_body, bad_header, secret in [
        (body, header, "another"),
        (b'{"id":"y"}', header, SECRET),
        (body, sign(SECRET, now - 301, body), SECRET),
        (body, None, SECRET),
        (body, "t=abc,v1=00", SECRET),
        (body, f"t={now}", SECRET),
    ]:
        with pytest.raises(SignatureInvalid):
            verify(bad_body, bad_header, secret)


async def test_hostile_webhook_counts_in_redis_are_left_out_of_the_stats(
    settings: Settings, redis: aioredis.Redis
) -> None:
    app = hooked(settings)
    try:
        shard = app.broker.keys.shard(0)
        await redis.hset(shard.callback_counts, mapping={"delivered": "x", "failed": "3", "?": "1"})
        assert (await app.stats()).callbacks.failed == 3
        await redis.delete(shard.callback_counts)
        await redis.set(shard.callback_counts, "not a hash")
        assert (await app.stats()).callbacks.delivered == 0
    finally:
        await app.close()


async def test_with_redis_gone_the_deliverer_waits_longer_each_round_and_says_so_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with own_server(settings) as (server, app):
        await app.connect()
        server.kill()
        stopping = asyncio.Event()
        deliverer = Deliverer(app, "patient")
        rounds = 0
        tried = deliverer.round

        async def counted() -> int:
            nonlocal rounds
            rounds += 1
            return await tried()

        deliverer.round = counted  # type: ignore[method-assign]
        with caplog.at_level("WARNING", logger="spillway.worker"):
            running = asyncio.create_task(deliverer.run(stopping))
            await asyncio.sleep(2.0)
            stopping.set()
            await asyncio.wait_for(running, 5)  # stops at once, however long its pause
        paused = [r for r in caplog.records if "webhook deliveries paused" in r.getMessage()]
        assert len(paused) == 1
        # 0.5, 1, 2 s apart (each round also waits for its refused connection): not 8 rounds.
        assert rounds <= 4, rounds
