"""The reference API, versioned under /api/v1."""

from fastapi import APIRouter

from stalwart.api import accounts, admin, auth, dashboard, docs, health, me, monitor, notes, trash

__all__ = ["router"]

router = APIRouter()
for _module in (health, accounts, auth, me, notes, trash, admin, docs, monitor, dashboard):
    router.include_router(_module.router)
