"""Liveness probe: the process answers. No dependency is checked here."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

__all__ = ["router"]

router = APIRouter(tags=["health"])


class Live(BaseModel):
    status: str = "pass"


_LIVE = Live()


@router.get("/health/live", response_model=Live, summary="Liveness: the process is up")
async def live() -> Live:
    return _LIVE
