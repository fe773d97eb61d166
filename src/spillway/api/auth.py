"""Who may make a request, decided on its headers before any body is read: the cross-site
checks (`spillway.api.browsers`), then the optional API key."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import Any

from pydantic import SecretStr

from spillway.api.browsers import SiteCheck
from spillway.api.problems import HTTPProblem

__all__ = ["ANONYMOUS", "CALLER", "PUBLIC_PATHS", "Auth"]

#: The idempotency scope of requests when authentication is off.
ANONYMOUS = "anon"
#: Where `SpillwayAPI` leaves the caller (its idempotency scope) in the ASGI scope.
CALLER = "spillway.caller"

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


class Auth:
    """Accepts ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` when keys are configured.

    Identifies the caller by a short hash of its key, so idempotency keys are scoped per API
    key without the key itself being stored or logged anywhere.
    """

    def __init__(
        self,
        keys: Sequence[SecretStr],
        browser: Callable[[str], bool] = lambda path: False,
        sites: SiteCheck | None = None,
    ) -> None:
        self._keys = [
            (k.get_secret_value().encode(), _scope_of(k.get_secret_value())) for k in keys
        ]
        self._browser = browser  # the paths a browser opens itself (Basic credentials)
        self._sites = sites or SiteCheck()

    def admit(self, scope: MutableMapping[str, Any], path: str) -> str:
        """Identify a request's caller and note it in its scope at `CALLER`; `HTTPProblem`
        unless it may call `path` (a path of the application, without a root path): 4xx from
        `SiteCheck.check` (another site, another Host), 401 without a valid key."""
        self._sites.check(scope, path)
        caller = ANONYMOUS
        if self._keys and path not in PUBLIC_PATHS:
            caller = self.identify(scope["headers"], browser=self._browser(path))
        scope[CALLER] = caller
        return caller

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, headers: Iterable[tuple[bytes, bytes]], *, browser: bool = False) -> str:
        """The caller's idempotency scope; `HTTPProblem` 401 without a valid key.

        With `browser` (the dashboard's paths) the key may also come as the password of HTTP
        Basic credentials, and a 401 asks for those, so a browser shows its login prompt.
        """
        if not self._keys:
            return ANONYMOUS
        challenge = _BROWSER_CHALLENGE if browser else _CHALLENGE
        given = _presented_key(headers, basic=browser)
        if given is None:
            raise HTTPProblem(401, "unauthorized", "an API key is required", headers=challenge)
        found = None
        # Compare against every key in constant time, without stopping at a match.
        for key, scope in self._keys:
            if hmac.compare_digest(given, key):
                found = scope
        if found is None:
            raise HTTPProblem(401, "unauthorized", "the API key is not valid", headers=challenge)
        return found


def _presented_key(headers: Iterable[tuple[bytes, bytes]], *, basic: bool) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
            if basic and scheme.lower() == b"basic":
                try:
                    _, _, password = base64.b64decode(credentials.strip()).partition(b":")
                except binascii.Error:
                    return None
                return password or None
        elif name == b"x-api-key" and value.strip():
            return value.strip()
    return None


def _scope_of(key: str) -> str:
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:16]
