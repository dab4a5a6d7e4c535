"""Swagger UI with self-hosted assets and no inline script, so it works under a strict CSP.

The assets come from the `fastapi-offline` package (Swagger UI 5, which reads the OpenAPI 3.1
document FastAPI writes; Swagger UI 4 refuses it): only its static folder is used.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from stalwart.policies.static import StaticAssets

__all__ = ["SWAGGER_DIR", "router", "swagger_assets"]

SWAGGER_DIR = Path(fastapi_offline.__file__).parent / "static"

router = APIRouter(include_in_schema=False)

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Stalwart API</title>
<link rel="icon" type="image/png" href="/docs/assets/favicon.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""

_INIT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
});
"""


@router.get("/docs")
async def swagger_page() -> HTMLResponse:
    return HTMLResponse(_PAGE)


@router.get("/docs/init.js")
async def swagger_init() -> HTMLResponse:
    return HTMLResponse(_INIT, media_type="text/javascript")


def swagger_assets(compression_min_size: int | None = None) -> StaticAssets:
    """The Swagger UI files, served as every static asset is (policies/static.py)."""
    return StaticAssets(SWAGGER_DIR, compression_min_size=compression_min_size)
