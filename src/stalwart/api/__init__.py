"""The reference API, versioned under /api/v1."""

from fastapi import APIRouter, FastAPI

from stalwart.api import accounts, admin, admin_data, auth, dashboard, docs, health, me, monitor, notes, trash
from stalwart.api.methods import HeadAsGet, MethodNotAllowed
from stalwart.api.params import NulParameterGuard

__all__ = ["AUDITED_READS", "include_api"]

# Included one by one into the app rather than through an aggregate router: each level of
# included router is one more routing pass per request in this FastAPI version.
ROUTERS: tuple[APIRouter, ...] = tuple(
    m.router for m in (health, accounts, auth, me, notes, trash, admin, admin_data, docs, monitor, dashboard)
)


# GET routes that record every read in the audit trail: no HEAD (api/methods.py).
AUDITED_READS = frozenset({"/api/v1/me/export", "/api/v1/admin/audit", "/api/v1/admin/backups/{name}"})


def include_api(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)
    # HEAD wherever GET works, and a full `Allow` on 405 (api/methods.py). HeadAsGet is added
    # first, so it sits innermost, right at the router.
    routes = [route for router in ROUTERS for route in router.routes]
    no_head = [route for route in routes if getattr(route, "path", None) in AUDITED_READS]
    app.add_middleware(HeadAsGet, no_head=no_head)
    app.add_exception_handler(405, MethodNotAllowed(routes, no_head))
    # Added before the policy stack, so it sits innermost, just outside the router: every
    # request the policies let through is checked (api/params.py).
    app.add_middleware(NulParameterGuard, routes=routes)
