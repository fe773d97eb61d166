"""The request headers the API decides on, by name, made once per request.

The site check (`spillway.api.browsers`), the API key (`spillway.api.auth`), the media type and
declared size (`spillway.api.body`) and the idempotency key (`spillway.api.accept`) all read
headers, on every accept request. Each scanning the list in Python cost three passes, about
10,000 CPU instructions per ``POST /tasks`` (docs/benchmarks.md#hardening-and-limits-ab); a
dict built from the list at C speed, kept in the scope, costs a few hundred.

A header these decisions read may come once: two ``Host``, ``Content-Type`` or
``Idempotency-Key`` headers could make one reader (a proxy, the site check) see one value and
another reader the other, so a second one is refused (400) instead of picking either.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from spillway.api.problems import HTTPProblem

__all__ = ["ONCE", "Found", "Scope", "preflighted", "request_headers"]

#: A request's headers by name, the last value of each.
Found = dict[bytes, bytes]
#: An ASGI scope.
Scope = MutableMapping[str, Any]

#: Headers a decision reads that must come at most once.
ONCE = frozenset(
    {
        b"host",
        b"content-type",
        b"content-length",
        b"origin",
        b"sec-fetch-site",
        b"idempotency-key",
        b"x-api-key",
        b"authorization",
    }
)
_SCOPE_KEY = "spillway.headers"


def request_headers(scope: Scope) -> Found:
    """The headers of `scope` by name, made once per request (`HTTPProblem` 400 if one of
    `ONCE` comes twice). The mapping is built at C speed; a name is found by one lookup."""
    found: Found | None = scope.get(_SCOPE_KEY)
    if found is None:
        headers = scope["headers"]
        found = dict(headers)
        if len(found) < len(headers):
            _refuse_repeated(headers)
        scope[_SCOPE_KEY] = found
    return found


def preflighted(found: Found) -> bool:
    """Whether the request carries a header a page can send only after a CORS preflight, which
    this API never grants: ``X-API-Key``, ``X-Requested-With`` or any ``X-Spillway-*``."""
    return (
        b"x-api-key" in found
        or b"x-requested-with" in found
        or any(name[:11] == b"x-spillway-" for name in found)
    )


def _refuse_repeated(headers: list[tuple[bytes, bytes]]) -> None:
    seen: set[bytes] = set()
    for name, _ in headers:
        if name in ONCE:
            if name in seen:
                shown = name.decode("latin-1").title()
                raise HTTPProblem(400, "bad-request", f"{shown} is sent more than once")
            seen.add(name)
