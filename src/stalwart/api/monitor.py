"""`/api/monitor` (detailed production figures, JSON) and `/metrics` (Prometheus text).

Both are for operators: an admin account's bearer token, or the dedicated monitor token
(`STALWART_MONITOR_TOKEN`, compared in constant time, and usable while the database is
down). 401 without a valid token, 403 for an account that is not an admin. The figures cover
every live worker and instance (see docs/monitoring.md).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.exceptions import HTTPException

from stalwart.api.monitor_report import build_report
from stalwart.api.monitor_schemas import MonitorOut
from stalwart.api.responses import errors
from stalwart.credentials import hash_token
from stalwart.monitoring.prometheus import render_metrics
from stalwart.monitoring.service import Monitoring

__all__ = ["monitor_access", "router"]

router = APIRouter(tags=["monitoring"])

# A scheme of its own: sharing the name "HTTPBearer" would give every API operation this description.
_bearer = HTTPBearer(
    auto_error=False, scheme_name="MonitorBearer", description="An admin account's token, or STALWART_MONITOR_TOKEN"
)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="stalwart"'}
_NO_STORE = {"Cache-Control": "no-store"}
_INVALID = "The bearer token is invalid, expired or revoked."


async def monitor_access(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Let through the monitor token or an admin account's token."""
    if credentials is None:
        raise HTTPException(401, "A bearer token is required.", headers=_CHALLENGE)
    token = credentials.credentials
    expected = request.app.state.settings.monitor_token
    if expected is not None and hmac.compare_digest(
        token.encode(), expected.get_secret_value().encode()
    ):
        request.state.authenticated = True
        return
    principal = None
    if len(token) <= 200:
        principal = await request.app.state.resources.db.reads.principal(hash_token(token))
    if principal is None:
        raise HTTPException(401, _INVALID, headers=_CHALLENGE)
    request.state.account_id = principal.account_id
    request.state.authenticated = True
    if principal.role != "admin":
        raise HTTPException(403, "Monitoring is for administrators.")


def _monitoring(request: Request) -> Monitoring:
    monitoring: Monitoring | None = request.app.state.resources.monitoring
    if monitoring is None:  # pragma: no cover - create_app always builds one
        raise HTTPException(503, "Monitoring is not running.")
    return monitoring


@router.get(
    "/api/monitor",
    response_model=MonitorOut,
    dependencies=[Depends(monitor_access)],
    responses=errors(401, 403),
    summary="Detailed production figures (administrators, or the monitor token)",
    description=(
        "Uptime, process and host figures, request volume, rates, latency percentiles and "
        "error rates over 1, 5 and 15 minutes per route template, rate-limit rejections, "
        "database pool, Redis latency and alerts, for every live worker and instance."
    ),
)
async def monitor(request: Request) -> Response:
    monitoring = _monitoring(request)
    cluster = await monitoring.cluster()
    checks = await monitoring.health.dependency_checks()
    resources = request.app.state.resources
    report = build_report(
        monitoring,
        request.app.state.settings,
        cluster,
        checks,
        db_backend=resources.db.url.get_backend_name(),
    )
    return Response(
        report.model_dump_json(by_alias=True),
        media_type="application/json",
        headers=_NO_STORE,
    )


@router.get(
    "/metrics",
    dependencies=[Depends(monitor_access)],
    responses={
        200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}, "description": "Prometheus text 0.0.4"},
        **errors(401, 403),
    },
    response_class=Response,
    summary="Prometheus metrics (administrators, or the monitor token)",
)
async def metrics(request: Request) -> Response:
    monitoring = _monitoring(request)
    settings = request.app.state.settings
    cluster = await monitoring.cluster()
    body = render_metrics(cluster, service=settings.service_id, environment=settings.env.value)
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4, headers=_NO_STORE)
