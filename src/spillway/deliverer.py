"""`Deliverer`: each worker POSTs the completion webhooks that are due (docs/webhooks.md).

Runs beside the worker's readers, never in a task's slot: a slow or dead receiver delays only
other webhooks, never a run. Each round claims what is due in every shard (`CallbackOps.claim`:
a claim is a lease, so a delivery interrupted by a crash is tried again by any worker), sends
at most `PARALLEL` at once, and settles them in one round trip.

One delivery: the URL is checked again (the record is untrusted), its host resolved, and every
address it resolves to must pass `address_refused`; the request then goes to that address
(so DNS cannot answer differently between the check and the connection), with the host name in
``Host`` and, over https, in SNI and the certificate check. No redirect is followed; the
response body is never read; the whole exchange is bounded by SPILLWAY_CALLBACK_TIMEOUT. A 2xx
is delivered; anything else is tried again after `retry_delay` until SPILLWAY_CALLBACK_RETRY_FOR
has passed since the task ended, then recorded as failed. A refused URL fails at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
import uuid
from importlib.metadata import version
from typing import Any
from urllib.parse import SplitResult

import httpx
import orjson

from spillway import metrics
from spillway.broker.callbacks import Claim, Settled
from spillway.errors import SpillwayError
from spillway.records import TaskRecord, Unreadable, resource
from spillway.settings import Settings
from spillway.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    address_refused,
    check_url,
    retry_delay,
    sign,
)

__all__ = ["Deliverer"]

log = logging.getLogger("spillway.worker")

#: Deliveries in flight at once, per worker process.
PARALLEL = 16
#: Claimed per shard and round.
CLAIM = 64
#: Seconds between rounds that found nothing due.
IDLE = 0.25
#: The longest wait between rounds while they fail.
PAUSE_MAX = 5.0
#: The longest error text kept in the record.
_ERROR = 300


class Refused(Exception):
    """A callback URL that may not be delivered to: failed at once, never retried."""


class Deliverer:
    """The webhook deliveries of one worker process."""

    def __init__(self, app: Any, name: str = "") -> None:
        self.app = app
        self.settings: Settings = app.settings
        self.token = f"{name or 'deliverer'}:{uuid.uuid4().hex[:12]}"
        secret = self.settings.callback_secret
        self.secret = None if secret is None else secret.get_secret_value().encode()
        self.lease_ms = int((self.settings.callback_timeout + 30) * 1000)
        #: The first retry's delay (seconds), doubling up to five minutes.
        self.retry_base = 1.0
        self._client: httpx.AsyncClient | None = None
        self._warned = False
        self._user_agent = f"Spillway/{version('spillway')} (webhook)"

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set. While Redis is away (or a round fails) it waits
        longer each time, up to `PAUSE_MAX` seconds, and says so once, not every round."""
        failures = 0
        try:
            while not stopping.is_set():
                try:
                    found = await self.round()
                except Exception as exc:  # claims lease out: they come back after the outage
                    failures += 1
                    if failures == 1:
                        if isinstance(exc, SpillwayError):
                            log.warning("webhook deliveries paused: %s", exc)
                        else:
                            log.exception("webhook deliveries: a round failed")
                    found = 0
                else:
                    if failures:
                        log.info("webhook deliveries resumed after %d failed rounds", failures)
                    failures = 0
                if not found:
                    wait = min(PAUSE_MAX, IDLE * 2**failures) if failures else IDLE
                    try:
                        async with asyncio.timeout(wait):
                            await stopping.wait()
                    except TimeoutError:
                        pass
        finally:
            await self.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def round(self) -> int:
        """Deliver what is due now in every shard; how many were tried."""
        broker = self.app.broker
        claims: list[Claim] = []
        for shard in broker.keys.all_shards():
            claims += await broker.callbacks.claim(
                shard, self.token, limit=CLAIM, lease_ms=self.lease_ms
            )
        if not claims:
            return 0
        if self.secret is None and not self._warned:
            self._warned = True  # once per process, and only where webhooks are in use
            log.warning("SPILLWAY_CALLBACK_SECRET is not set: webhooks go out unsigned")
        gate = asyncio.Semaphore(PARALLEL)

        async def one(claim: Claim) -> Settled:
            async with gate:
                return await self.deliver(claim)

        settled = await asyncio.gather(*(one(c) for c in claims))
        await broker.callbacks.settle(settled)
        for s in settled:
            metrics.callback_delivered(s.kind)
        return len(claims)

    async def deliver(self, claim: Claim) -> Settled:
        """POST one task's resource to its callback URL; how it went."""
        attempts = _count(claim.record.get("callback_attempts")) + 1
        try:
            record = TaskRecord.from_hash(claim.record)
            if record.callback is None:
                raise Unreadable("callback", "is missing")
        except Unreadable as exc:
            log.warning(
                "task %s: its record cannot be read for its webhook: %s", claim.task_id, exc
            )
            return Settled(claim, "failed", attempts, f"record unreadable: {exc}"[:_ERROR])
        body = orjson.dumps(resource(record))
        try:
            status = await self._post(
                record.callback.url, body, claim.task_id, attempts, record.status.value
            )
        except Refused as exc:
            log.warning("task %s: its webhook is refused: %s", claim.task_id, exc)
            return Settled(claim, "failed", attempts, f"refused: {exc}"[:_ERROR])
        except (httpx.HTTPError, OSError, ValueError) as exc:  # TimeoutError is an OSError
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a bug must cost one try, not the deliverer
            log.exception("task %s: its webhook's delivery raised", claim.task_id)
            error = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= status < 300:
                return Settled(claim, "delivered", attempts)
            error = f"HTTP {status}"
        return self._again(claim, record, attempts, error[:_ERROR])

    def _again(self, claim: Claim, record: TaskRecord, attempts: int, error: str) -> Settled:
        """A failed try: due again after a backoff, or failed once the retry window is over."""
        delay = retry_delay(attempts, self.retry_base)
        ended = record.finished_at.timestamp() if record.finished_at else time.time()
        if time.time() + delay - ended > self.settings.callback_retry_for:
            log.warning("task %s: its webhook failed for good after %d tries: %s",
                        claim.task_id, attempts, error)  # fmt: skip
            return Settled(claim, "failed", attempts, error)
        return Settled(claim, "retry", attempts, error, int(delay * 1000))

    async def _post(self, url: str, body: bytes, task_id: str, attempt: int, status: str) -> int:
        try:
            parts = check_url(url, self.settings.callback_networks)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        async with asyncio.timeout(self.settings.callback_timeout):
            address = await self._address(parts)
            headers = {
                "content-type": "application/json",
                "user-agent": self._user_agent,
                "host": parts.netloc,
                DELIVERY_HEADER: f"{task_id}.{attempt}",
                "spillway-event": f"task.{status}",
            }
            if self.secret is not None:
                headers[SIGNATURE_HEADER] = sign(self.secret, int(time.time()), body)
            host = f"[{address}]" if address.version == 6 else str(address)
            target = parts._replace(netloc=f"{host}:{_port(parts)}").geturl()
            extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
            http = self._http()
            request = http.build_request(
                "POST", target, content=body, headers=headers, extensions=extensions
            )
            response = await http.send(request, stream=True)
            await response.aclose()  # the body is never read: a receiver's answer is its status
            return response.status_code

    async def _address(self, parts: SplitResult) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The address to connect to: every one the host resolves to must be allowed."""
        host = parts.hostname or ""
        try:
            return _allowed([ipaddress.ip_address(host)], self.settings)
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, _port(parts), type=socket.SOCK_STREAM
        )
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        return _allowed(addresses, self.settings)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment: the address check is ours
                timeout=self.settings.callback_timeout,
                limits=httpx.Limits(max_connections=PARALLEL, max_keepalive_connections=PARALLEL),
            )
        return self._client


def _allowed(
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address], settings: Settings
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    for address in addresses:
        if (why := address_refused(address, settings.callback_networks)) is not None:
            raise Refused(why)
    return addresses[0]


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def _count(value: str | None) -> int:
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0
