"""``/docs``: Swagger UI served from the package, so the page loads nothing from the internet.

Swagger UI's files come from the ``fastapi-offline`` package, which ships them (FastAPI's own
page loads them from a CDN); the page and the script that starts Swagger UI are ours, so the
page's Content-Security-Policy allows no inline script and nothing from another origin.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Response
from starlette.exceptions import HTTPException

from spillway.api.browsers import PAGE_HEADERS, page_policy

__all__ = ["add_docs_routes"]

#: name -> (package that ships it, media type)
_ASSETS = {
    "swagger-ui.css": ("fastapi_offline", "text/css; charset=utf-8"),
    "swagger-ui-bundle.js": ("fastapi_offline", "text/javascript; charset=utf-8"),
    "favicon.png": ("fastapi_offline", "image/png"),
    "docs.js": ("spillway.api", "text/javascript; charset=utf-8"),
}
# Swagger UI's stylesheet draws its icons from data: URLs; "Try it out" calls this origin.
_HEADERS = {**PAGE_HEADERS, "Content-Security-Policy": page_policy(img_src="'self' data:")}


def _file(package: str, name: str) -> bytes:
    return files(package).joinpath("static", name).read_bytes()


def add_docs_routes(api: FastAPI) -> None:
    """The Swagger UI page at ``/docs`` and its assets at ``/docs/static/``."""

    @api.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        body = _file("spillway.api", "docs.html")
        return Response(body, media_type="text/html; charset=utf-8", headers=_HEADERS)

    @api.get("/docs/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in _ASSETS:
            raise HTTPException(404, f"no docs asset {name!r}")
        package, media_type = _ASSETS[name]
        headers = {"Cache-Control": "max-age=3600", **_HEADERS}
        return Response(_file(package, name), media_type=media_type, headers=headers)
