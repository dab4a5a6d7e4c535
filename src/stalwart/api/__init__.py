"""The reference API, versioned under /api/v1."""

from fastapi import APIRouter

from stalwart.api import accounts, admin, auth, docs, me, notes, probes

__all__ = ["router"]

router = APIRouter()
for _module in (probes, accounts, auth, me, notes, admin, docs):
    router.include_router(_module.router)
