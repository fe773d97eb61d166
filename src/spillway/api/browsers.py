"""What a browser may make the API do: requests from other sites, other Host names, framing.

A page on another site can make its visitor's browser send a ``POST`` without asking the API
first (no CORS preflight) only if the request is "simple": a form's media type
(``application/x-www-form-urlencoded``, ``multipart/form-data``, ``text/plain``) or none, and
no header but a few safelisted ones. The browser adds its own ``Origin`` and, in current
browsers, ``Sec-Fetch-Site``. `SiteCheck` refuses, on the headers alone, a state-changing
request that carries either mark of another site, a form's media type, or credentials a
browser resends by itself (Basic, a cookie) without a header a simple request cannot carry.
It also refuses a ``Host`` the server was not told it serves (`Settings.allowed_hosts`),
which stops DNS rebinding. `Auth.admit` runs it before the API key, so `SpillwayAPI.__call__`
and `Accept.direct_route` both do.

The headers of every answer (`API_HEADERS`, and the stricter policies the dashboard and
``/docs`` send) stop other sites from framing a page or sniffing a JSON answer as HTML.
"""

from __future__ import annotations

from collections.abc import Iterable

from spillway.api.headers import Scope, preflighted, request_headers
from spillway.api.problems import HTTPProblem

__all__ = ["API_HEADERS", "PAGE_HEADERS", "SiteCheck", "page_policy"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FORM_TYPES = frozenset(
    {b"application/x-www-form-urlencoded", b"multipart/form-data", b"text/plain"}
)
_OWN_SITE = frozenset({b"same-origin", b"none"})
_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}
# Probes of an orchestrator often name the pod's address; they answer nothing worth rebinding.
_PROBES = frozenset({"/healthz", "/readyz"})

#: Security headers of every API answer (pages send theirs, `page_policy`).
API_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
)


def page_policy(**sources: str) -> str:
    """A page's strict Content-Security-Policy: its own origin only, never framed, plus the
    extra `sources` (directive with ``_`` for ``-``: ``img_src="'self' data:"``)."""
    directives = {
        "default-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
        **{name.replace("_", "-"): value for name, value in sources.items()},
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


#: The headers of a page or one of its assets, besides its Content-Security-Policy.
PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class SiteCheck:
    """Refuses cross-site state changes, and Host names the server does not serve."""

    def __init__(self, allowed_hosts: Iterable[str] = ()) -> None:
        hosts = {h.strip().lower() for h in allowed_hosts if h.strip()}
        #: None: any Host (the default, and ``*``).
        self.hosts: frozenset[str] | None = None if not hosts or "*" in hosts else frozenset(hosts)

    def check(self, scope: Scope, path: str) -> None:
        """`HTTPProblem` unless the request's headers may reach `path` (without a root path)."""
        unsafe = scope["method"] not in _SAFE_METHODS
        if not unsafe and self.hosts is None:
            return
        found = request_headers(scope)
        if (
            self.hosts is None
            and found.get(b"content-type") == b"application/json"
            and b"origin" not in found
            and b"sec-fetch-site" not in found
        ):
            # An API client's request (most of them): any Host, no mark of another site, and
            # a media type a cross-site page cannot send without a preflight. Nothing below
            # could refuse it; this saves the accept path a third of the check.
            return
        host = found.get(b"host")
        media = found.get(b"content-type")
        if media is not None and media != b"application/json":
            media = _media(media)
        # Credentials a browser resends by itself: a cookie, Basic (the dashboard's login).
        # A bearer token is not one: a page can send Authorization only after a preflight.
        authorization = found.get(b"authorization")
        bearer = authorization is not None and authorization[:7].lower() == b"bearer "
        ambient = b"cookie" in found or (authorization is not None and not bearer)
        if self.hosts is not None and path not in _PROBES and not _serves(host, self.hosts):
            shown = (host or b"").decode("latin-1") or "none"
            raise HTTPProblem(421, "host-not-allowed", f"this server does not serve Host {shown}")
        if not unsafe:
            return
        site, origin = found.get(b"sec-fetch-site"), found.get(b"origin")
        if site is not None and site not in _OWN_SITE:
            detail = f"a request from another site (Sec-Fetch-Site: {site.decode('latin-1')})"
            raise HTTPProblem(403, "cross-site-request", f"{detail} cannot change anything")
        if origin is not None and not _same_origin(origin, host):
            detail = f"a request from another origin ({origin.decode('latin-1')})"
            raise HTTPProblem(403, "cross-site-request", f"{detail} cannot change anything")
        if media in _FORM_TYPES:
            raise HTTPProblem(
                415,
                "unsupported-media-type",
                f"no route takes {media.decode('latin-1')}: send application/json",
            )
        if ambient and not (bearer or origin is not None or _is_json(media) or preflighted(found)):
            # Credentials a browser resends by itself, on a POST a cross-site page can make
            # a browser that names no origin send: the client must show it is not one.
            raise HTTPProblem(
                400,
                "bad-request",
                "with browser credentials, send Content-Type: application/json or an "
                "X-Spillway-* header (a request another site can make a browser send has neither)",
            )


def _serves(host: bytes | None, hosts: frozenset[str]) -> bool:
    """Whether `host` is one of `hosts`, by name (any port); ``.example.com`` names that domain
    and all under it."""
    if host is None:
        return False
    name = _host_name(host.decode("latin-1").lower())
    return any(
        name == allowed or (allowed[:1] == "." and (name.endswith(allowed) or name == allowed[1:]))
        for allowed in hosts
    )


def _media(value: bytes) -> bytes:
    """A Content-Type's media type, without parameters, in lower case."""
    return value.split(b";", 1)[0].strip().lower()


def _is_json(media: bytes | None) -> bool:
    return media is not None and (media == b"application/json" or media.endswith(b"+json"))


def _host_name(host: str) -> str:
    """A Host header's name without its port (``[::1]:8000`` -> ``[::1]``)."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def _same_origin(origin: bytes, host: bytes | None) -> bool:
    """Whether `origin` names the server the request reached (its Host). Only the authority is
    compared: behind a TLS-terminating proxy the request's own scheme is not the page's."""
    scheme, sep, authority = origin.lower().partition(b"://")
    if not sep or host is None:
        return False  # ``null`` (a sandboxed or privacy-stripped origin), or no Host
    host = host.lower()
    port = _DEFAULT_PORTS.get(scheme)
    if port is not None:
        authority = authority.removesuffix(port)
        host = host.removesuffix(port)
    return authority == host
