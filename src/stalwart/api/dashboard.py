"""`GET /monitor`: the live dashboard, a static page with its own script and stylesheet.

The page holds no data and no secret: its script asks for a token (an admin's bearer token or
the monitor token), keeps it in sessionStorage and sends it to `/api/monitor`. Everything is
served from this service (no CDN) as files, with no inline script or style, so it works under
the strict Content-Security-Policy (`script-src 'self'`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

__all__ = ["MONITOR_ASSETS", "router"]

MONITOR_ASSETS = Path(__file__).resolve().parent.parent / "static" / "monitor"

router = APIRouter(include_in_schema=False)


class _Asset:
    __slots__ = ("body", "etag", "media_type")

    def __init__(self, name: str, media_type: str) -> None:
        self.body = (MONITOR_ASSETS / name).read_bytes()
        self.media_type = media_type
        # Weak: the compression middleware may send these bytes in another content coding.
        self.etag = 'W/"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'

    def response(self, request: Request) -> Response:
        # Small files read once; `no-cache` makes browsers revalidate, so an upgrade shows at once.
        headers = {"ETag": self.etag, "Cache-Control": "no-cache"}
        candidates = request.headers.get("if-none-match", "").split(",")
        if any(c.strip().removeprefix("W/") == self.etag[2:] for c in candidates):
            # The 200's Content-Type and Vary too, as policies/static.py does: the security
            # headers layer picks the CSP by the type (without one, a JSON document's
            # `default-src 'none'`), and a cache updates the stored page with these fields.
            not_modified = {**headers, "Content-Type": self.media_type, "Vary": "Accept-Encoding"}
            return Response(status_code=304, headers=not_modified)
        return Response(self.body, media_type=self.media_type, headers=headers)


_PAGE = _Asset("index.html", "text/html; charset=utf-8")
_ASSETS = {
    "monitor.js": _Asset("monitor.js", "text/javascript; charset=utf-8"),
    "monitor.css": _Asset("monitor.css", "text/css; charset=utf-8"),
}


@router.get("/monitor")
async def dashboard(request: Request) -> Response:
    return _PAGE.response(request)


@router.get("/monitor/assets/{name}")
async def dashboard_asset(name: str, request: Request) -> Response:
    asset = _ASSETS.get(name)
    if asset is None:
        raise HTTPException(404, "No such file.")
    return asset.response(request)
