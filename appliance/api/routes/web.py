"""The browser playground: ``GET /`` and its static files from ``appliance/web/``, no key.

The page is a plain client of the public /v1 API: the user pastes a key, the browser keeps it
in session storage and sends it as a Bearer token like any SDK. Nothing here reads the ledger
or the engines. Only the files listed below are served (no directory walking), each with a
Content-Security-Policy that allows this origin alone: the page works offline and cannot
load anything from elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from appliance.errors import NotFound

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
        "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
    "referrer-policy": "no-referrer",
}


async def playground(request: Request) -> Response:
    return FileResponse(WEB_ROOT / "index.html", media_type="text/html; charset=utf-8",
                        headers=_HEADERS)


async def playground_asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    return FileResponse(WEB_ROOT / name, media_type=media_type, headers=_HEADERS)


def web_routes() -> list[Route]:
    return [
        Route("/", playground, methods=["GET"]),
        Route("/web/{name}", playground_asset, methods=["GET"]),
    ]
