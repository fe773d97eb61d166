"""Completion webhooks: which callback URLs a task may name, how a delivery is signed, and how a
receiver verifies it (docs/webhooks.md).

A task with a ``callback_url`` has its resource (what ``GET /tasks/{id}`` answers) POSTed
there once it reaches a terminal status, signed with SPILLWAY_CALLBACK_SECRET:

    Spillway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

A receiver checks it with `verify` (or the few lines docs/webhooks.md shows for other
languages) and refuses a signature older than a few minutes, so a captured delivery cannot be
replayed later. Deliveries are at least once: `Spillway-Delivery` names the task and attempt,
the same on a resend of the same attempt.

Pure functions only: the deliveries themselves are `spillway.deliverer`'s.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import time
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "SignatureInvalid",
    "address_refused",
    "check_url",
    "retry_delay",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "Spillway-Signature"
DELIVERY_HEADER = "Spillway-Delivery"
#: The longest callback URL a task may carry.
MAX_URL = 2048
#: Seconds a signature stays valid for `verify`, by default.
TOLERANCE = 300.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class SignatureInvalid(ValueError):
    """A delivery whose signature is missing, malformed, wrong or too old."""


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``Spillway-Signature`` header of `body` sent at `timestamp` (unix seconds)."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    body: bytes,
    header: str | None,
    secret: str | bytes,
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> None:
    """Raise `SignatureInvalid` unless `header` signs `body` (the raw bytes received) with
    `secret`, at most `tolerance` seconds ago. Several ``v1=`` values are accepted (one per
    secret while a secret is being rotated)."""
    if not header:
        raise SignatureInvalid(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1":
            macs.append(value)
    if timestamp is None or not macs:
        raise SignatureInvalid(f"{SIGNATURE_HEADER} has no t= or no v1=")
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance:
        raise SignatureInvalid(f"signed {age:.0f} s ago; at most {tolerance:g} s are accepted")
    expected = sign(secret, timestamp, body).rpartition("=")[2]
    if not any(hmac.compare_digest(expected, mac) for mac in macs):
        raise SignatureInvalid("the signature does not match the body and secret")


def address_refused(address: Address, allowed: Sequence[Network]) -> str | None:
    """Why a delivery may not go to `address`, or None. Private, loopback, link-local,
    multicast, reserved and unspecified addresses are refused (a task's submitter must not
    reach the workers' own network) unless SPILLWAY_CALLBACK_ALLOW_NETWORKS holds them."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address in network for network in allowed):
        return None
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def check_url(url: str, allowed: Sequence[Network]) -> SplitResult:
    """The parts of a callback URL a task may carry; `ValueError` saying why not.

    http or https, ASCII, a host, no user name or password, at most 2 KiB; a host given as an
    address must pass `address_refused` (a host name is checked again, resolved, at each
    delivery: DNS may change its answer).
    """
    if len(url) > MAX_URL:
        raise ValueError(f"longer than {MAX_URL} characters")
    if not url.isascii():
        raise ValueError("must be ASCII (an international host name in its xn-- form)")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise ValueError("contains white space or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http or https URL")
    if not parts.hostname:
        raise ValueError("has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user name or password")
    if port == 0:
        raise ValueError("has port 0")
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return parts
    if (why := address_refused(address, allowed)) is not None:
        raise ValueError(f"refused: {why}")
    return parts


def retry_delay(attempt: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Seconds before the next try after `attempt` failed: exponential, capped, with jitter
    (half to all of it), so receivers that come back are not hit by every sender at once."""
    delay: float = min(cap, base * 2.0 ** min(attempt - 1, 30))
    return delay * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not a secret
