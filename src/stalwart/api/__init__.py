"""The reference API, versioned under /api/v1."""

from fastapi import APIRouter, Depends

from stalwart.api import accounts, admin, auth, dashboard, docs, health, me, monitor, notes, trash
from stalwart.api.params import refuse_nul

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(refuse_nul)])  # every operation: see api/params.py
for _module in (health, accounts, auth, me, notes, trash, admin, docs, monitor, dashboard):
    router.include_router(_module.router)
