"""The refusal a route handler returns when its own budget (`backend.hit`) says no."""

from __future__ import annotations

from starlette.requests import Request

from stalwart.policies.errors import ProblemResponse
from stalwart.policies.problem import problem_type
from stalwart.policies.rate_limit.headers import rate_limit_headers
from stalwart.policies.rate_limit.policy import Decision

__all__ = ["quota_exceeded"]


def quota_exceeded(request: Request, decision: Decision) -> ProblemResponse:
    """429 quota-exceeded (or 503 when the store was down and fail-closed), as the middleware.

    Usage in the login route::

        decision = await limiter.hit(account_key(email), login_account_policy(settings))
        if not decision.allowed:
            return quota_exceeded(request, decision)
    """
    headers = rate_limit_headers(decision)
    if decision.degraded:
        headers["Retry-After"] = "1"
        return ProblemResponse(
            request,
            503,
            title="Service Unavailable",
            detail="The request quota cannot be checked right now; retry shortly.",
            type_=problem_type("service-unavailable"),
            headers=headers,
        )
    name = decision.policy.name
    return ProblemResponse(
        request,
        429,
        title="Too Many Requests",
        detail=f"Request quota {name} exceeded; see Retry-After.",
        type_=problem_type("quota-exceeded"),
        headers=headers,
        extra={"violated-policies": [name]},
    )
