"""Load-balancer probes: `/health/live` (the process answers) and `/health` (ready to serve).

Both are exempt from rate limiting (policies/rate_limit) and from the HTTPS redirect
(policies/https.py), and neither reveals a secret, a host name or a connection string.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from stalwart.monitoring.health import HEALTH_CONTENT_TYPE

__all__ = ["HealthCheckOut", "HealthOut", "Live", "router"]

router = APIRouter(tags=["health"])

_NO_STORE = {"Cache-Control": "no-store"}


class Live(BaseModel):
    status: str = "pass"


class HealthCheckOut(BaseModel):
    """One measurement of one component (IETF health-check draft, section 4)."""

    model_config = ConfigDict(populate_by_name=True)

    component_type: str = Field(alias="componentType", examples=["datastore"])
    observed_value: float | bool | None = Field(alias="observedValue", examples=[0.42])
    observed_unit: str = Field(alias="observedUnit", examples=["ms"])
    status: Literal["pass", "warn", "fail"]
    time: str = Field(examples=["2025-01-02T03:04:05.678Z"])
    output: str | None = Field(
        default=None, description="Why a check failed: timeout, unreachable or unreadable"
    )


class HealthOut(BaseModel):
    """`application/health+json` (draft-inadarei-api-health-check)."""

    model_config = ConfigDict(populate_by_name=True)

    status: Literal["pass", "warn", "fail"]
    version: str
    release_id: str = Field(alias="releaseId")
    service_id: str = Field(alias="serviceId")
    description: str
    checks: dict[str, list[HealthCheckOut]] = Field(
        description='Keyed "component:measurement": database:responseTime, redis:responseTime '
        "(when Redis is configured), disk:free, memory:rss, process:shutdown",
    )


class HealthResponse(JSONResponse):
    """Bodies are rendered by orjson before; a JSONResponse so the spec shows the model."""

    media_type = HEALTH_CONTENT_TYPE

    def render(self, content: Any) -> bytes:
        # FastAPI documents a non-JSONResponse class as `{"type": "string"}`, which is false.
        assert isinstance(content, bytes)
        return content


_LIVE_BODY = orjson.dumps({"status": "pass"})


@router.head("/health/live", include_in_schema=False)
@router.get(
    "/health/live",
    response_model=Live,
    response_class=HealthResponse,
    summary="Liveness: the process is up (no dependency is checked)",
)
async def live() -> Response:
    return HealthResponse(_LIVE_BODY, headers=_NO_STORE)


@router.head("/health", include_in_schema=False)
@router.get(
    "/health",
    response_model=HealthOut,
    response_class=HealthResponse,
    summary="Readiness: database, Redis, disk, memory and shutdown state",
    description=(
        "200 when every check passes or warns, 503 when one fails (the load balancer should "
        "stop sending traffic). Dependency checks are bounded by a short timeout and cached "
        "for about a second, so frequent probes cost the database nothing more."
    ),
    responses={503: {"model": HealthOut, "description": "Not ready: a check failed"}},
)
async def ready(request: Request) -> Response:
    monitoring = request.app.state.resources.monitoring
    report = await monitoring.health.report()
    body = orjson.dumps(report.body(request.app.state.settings))
    return HealthResponse(
        body, status_code=503 if report.status == "fail" else 200, headers=_NO_STORE
    )
