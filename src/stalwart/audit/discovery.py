"""Which routes of the audited API to try, from its OpenAPI document.

The audit knows nothing of the API beyond its URL; its OpenAPI document names its routes. Only
safe requests are derived from it: GETs, and requests to routes that declare a required JSON
body, sent a body that is not JSON, so a server that parses before acting (any that validates
its input) refuses them before anything happens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Routes", "discover"]

_PARAM = re.compile(r"\{[^}/]*\}")
# A path a URL can carry as it is: no control characters, spaces or quotes, at most 2000, and
# not "//" first (a URL would read what follows as a host).
_PATH = re.compile(r"/(?!/)[!#-~]{0,1999}")
# Routes whose GET a careful audit leaves alone even though GET should be safe, and the
# operational ones it checks apart (they may have limits of their own, for their probes).
_AVOID = ("logout", "erase", "delete", "export", "backup", "download", "shutdown", "restart",
          "health", "monitor", "metrics", "openapi", "docs")


@dataclass(frozen=True)
class Routes:
    """Paths to try: plain GETs, GETs with made-up parameters, and routes taking a JSON body."""

    reads: list[str] = field(default_factory=list)
    item_reads: list[str] = field(default_factory=list)
    json_bodies: list[tuple[str, str]] = field(default_factory=list)  # (method, path)


def discover(document: object, limit: int = 3) -> Routes:
    """Up to `limit` routes of each kind from an OpenAPI `document` (any JSON value)."""
    routes = Routes()
    paths = document.get("paths") if isinstance(document, dict) else None
    if not isinstance(paths, dict):
        return routes
    # API routes first: they are the ones the policy's limits and headers matter most for.
    ordered = sorted((p for p in paths if isinstance(p, str) and _PATH.fullmatch(p)),
                     key=lambda p: (not p.startswith("/api"), p.count("/"), p))
    for path in ordered:
        item = paths[path]
        if not isinstance(item, dict) or any(word in path.lower() for word in _AVOID):
            continue
        if isinstance(item.get("get"), dict):
            if "{" not in path:
                if len(routes.reads) < limit:
                    routes.reads.append(path)
            elif len(routes.item_reads) < limit:
                routes.item_reads.append(_PARAM.sub("audit-0", path))
        for method in ("post", "put", "patch"):
            operation = item.get(method)
            if len(routes.json_bodies) < limit and _takes_required_json(operation):
                routes.json_bodies.append((method.upper(), _PARAM.sub("audit-0", path)))
    return routes


def _takes_required_json(operation: object) -> bool:
    if not isinstance(operation, dict):
        return False
    body = operation.get("requestBody")
    if not isinstance(body, dict) or body.get("required") is not True:
        return False
    content = body.get("content")
    return isinstance(content, dict) and list(content) == ["application/json"]
