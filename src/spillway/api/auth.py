"""Who may make a request, decided on its headers before any body is read: the cross-site
checks (`spillway.api.browsers`), then the optional API key and its role.

Two roles (docs/security.md#roles): a *client* key submits tasks and reads, waits for and
cancels the tasks it submitted; an *admin* key may do everything, including every task, the
dead letters, stats, metrics and the dashboard. Without keys the API is open and every caller
is an admin (`spillway dev`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from spillway.api.browsers import SiteCheck
from spillway.api.headers import Found, request_headers
from spillway.api.problems import HTTPProblem

__all__ = ["ADMIN", "ANONYMOUS", "CALLER", "PUBLIC_PATHS", "Auth", "Caller", "owner_filter"]

#: The idempotency scope of requests when authentication is off.
ANONYMOUS = "anon"
#: Where `SpillwayAPI` leaves the caller (its idempotency scope) in the ASGI scope.
CALLER = "spillway.caller"
#: Where it leaves whether the caller is an admin (True in open mode).
ADMIN = "spillway.admin"

#: What a client key may call besides `PUBLIC_PATHS`: submit, and its own tasks. Every other
#: path, and so every route added later unless it is listed here, is for admins only.
_CLIENT_PATHS = frozenset({"/tasks", "/tasks/batch", "/process"})

#: Paths that answer without a key: probes and the API description (with its page's assets).
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/docs",
        "/docs/static/swagger-ui.css",
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/docs.js",
        "/docs/static/favicon.png",
        "/openapi.json",
    }
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="spillway"'}
# Browsers prompt for Basic credentials by themselves; the password is the API key.
_BROWSER_CHALLENGE = {"WWW-Authenticate": 'Basic realm="spillway", charset="UTF-8"'}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from: its idempotency scope (a short hash of its key, which is also
    the owner stamped on the tasks it submits) and whether it is an admin."""

    scope: str
    admin: bool


class Auth:
    """Accepts ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` when keys are configured.

    Keys are held only as SHA-256 digests: the digest of the key presented is compared with
    each in constant time (`hmac.compare_digest`, without stopping at a match), so neither a
    memory dump nor a timing shows a key; no key is ever logged. The caller is identified by
    a short hash of its key, so idempotency keys and task ownership are scoped per API key.
    """

    def __init__(
        self,
        keys: Sequence[SecretStr],
        browser: Callable[[str], bool] = lambda path: False,
        sites: SiteCheck | None = None,
        *,
        admin_keys: Sequence[SecretStr] = (),
    ) -> None:
        self._keys = [_entry(k, admin=False) for k in keys] + [
            _entry(k, admin=True) for k in admin_keys
        ]
        self.has_admin = bool(admin_keys) or not self._keys
        self._browser = browser  # the paths a browser opens itself (Basic credentials)
        self._sites = sites or SiteCheck()

    def admit(self, scope: MutableMapping[str, Any], path: str) -> str:
        """Identify a request's caller and note it in its scope at `CALLER` and `ADMIN`;
        `HTTPProblem` unless it may call `path` (a path of the application, without a root
        path): 4xx from `SiteCheck.check` (another site, another Host), 401 without a valid
        key, 403 for a client key on an admin's path."""
        self._sites.check(scope, path)
        if not self._keys:
            scope[CALLER] = ANONYMOUS
            scope[ADMIN] = True
            return ANONYMOUS
        if path in PUBLIC_PATHS:
            scope[CALLER] = ANONYMOUS
            scope[ADMIN] = False
            return ANONYMOUS
        caller = self._identify(request_headers(scope), browser=self._browser(path))
        if not caller.admin and not _client_may(path):
            raise HTTPProblem(403, "forbidden", "this API key may not call this path")
        scope[CALLER] = caller.scope
        scope[ADMIN] = caller.admin
        return caller.scope

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, headers: Iterable[tuple[bytes, bytes]], *, browser: bool = False) -> Caller:
        """The caller; `HTTPProblem` 401 without a valid key (an admin when keys are off).

        With `browser` (the dashboard's paths) the key may also come as the password of HTTP
        Basic credentials, and a 401 asks for those, so a browser shows its login prompt.
        """
        return self._identify(request_headers({"headers": list(headers)}), browser=browser)

    def _identify(self, headers: Found, *, browser: bool) -> Caller:
        if not self._keys:
            return Caller(ANONYMOUS, admin=True)
        challenge = _BROWSER_CHALLENGE if browser else _CHALLENGE
        given = _presented_key(headers, basic=browser)
        if given is None:
            raise HTTPProblem(401, "unauthorized", "an API key is required", headers=challenge)
        digest = hashlib.sha256(given).digest()
        found = None
        for key, caller in self._keys:
            if hmac.compare_digest(digest, key):
                found = caller
        if found is None:
            raise HTTPProblem(401, "unauthorized", "the API key is not valid", headers=challenge)
        return found


def owner_filter(scope: Mapping[str, Any]) -> str | None:
    """The owner whose tasks a request may see: None (every task) for an admin, else the
    caller's scope."""
    return None if scope.get(ADMIN, False) else str(scope.get(CALLER, ANONYMOUS))


#: Operators' paths that look like a task's ("/tasks/{id}"): admin only all the same.
_ADMIN_TASK_PATHS = frozenset({"/tasks/cancel"})


def _client_may(path: str) -> bool:
    # "/tasks/{id}" (read, wait, cancel) and "/tasks/{id}/events", not other deeper paths
    # such as a future "/tasks/{id}/x".
    if path in _ADMIN_TASK_PATHS:
        return False
    if path.startswith("/tasks/") and path.count("/") == 3 and path.endswith("/events"):
        return True
    return path in _CLIENT_PATHS or (path.startswith("/tasks/") and path.count("/") == 2)


def _entry(key: SecretStr, *, admin: bool) -> tuple[bytes, Caller]:
    secret = key.get_secret_value().encode()
    return hashlib.sha256(secret).digest(), Caller(_scope_of(secret), admin)


def _presented_key(found: Found, *, basic: bool) -> bytes | None:
    """The key of ``Authorization: Bearer``, of Basic credentials' password when `basic`, else
    of ``X-API-Key``."""
    authorization = found.get(b"authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer" and credentials.strip():
            return credentials.strip()
        if basic and scheme.lower() == b"basic":
            try:
                _, _, password = base64.b64decode(credentials.strip()).partition(b":")
            except binascii.Error:
                return None
            return password or None
    api_key = found.get(b"x-api-key")
    return api_key.strip() or None if api_key is not None else None


def _scope_of(key: bytes) -> str:
    return "k" + hashlib.sha256(key).hexdigest()[:16]
