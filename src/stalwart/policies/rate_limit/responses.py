"""Refusals for budgets a route handler applies itself with `backend.hit` (per account)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request

from stalwart.policies.errors import ProblemResponse
from stalwart.policies.problem import problem_type
from stalwart.policies.rate_limit.backend import RateLimitBackend
from stalwart.policies.rate_limit.headers import rate_limit_headers
from stalwart.policies.rate_limit.keys import account_key
from stalwart.policies.rate_limit.policy import Decision, Policy

__all__ = ["QuotaExceededError", "account_limiter", "quota_exceeded"]

_UNAVAILABLE = "The request quota cannot be checked right now; retry shortly."


def _detail(decision: Decision) -> str:
    return f"Request quota {decision.policy.name} exceeded; see Retry-After."


def quota_exceeded(request: Request, decision: Decision) -> ProblemResponse:
    """429 quota-exceeded (or 503 when the store was down and fail-closed), as the middleware.

    Usage in a route::

        decision = await limiter.hit(account_key(email), policy)
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
            detail=_UNAVAILABLE,
            type_=problem_type("service-unavailable"),
            headers=headers,
        )
    return ProblemResponse(
        request,
        429,
        title="Too Many Requests",
        detail=_detail(decision),
        type_=problem_type("quota-exceeded"),
        headers=headers,
        extra={"violated-policies": [decision.policy.name]},
    )


class QuotaExceededError(HTTPException):
    """Raised from deep in a handler; rendered by the HTTPException problem handler.

    `extra` holds the problem's `violated-policies` member for a handler that forwards it.
    """

    def __init__(self, decision: Decision) -> None:
        headers = rate_limit_headers(decision)
        if decision.degraded:
            headers["Retry-After"] = "1"
            super().__init__(503, _UNAVAILABLE, headers=headers)
            self.extra: dict[str, object] = {}
        else:
            super().__init__(429, _detail(decision), headers=headers)
            self.extra = {"violated-policies": [decision.policy.name]}
        self.decision = decision


def account_limiter(
    backend: RateLimitBackend, policy: Policy, scope: str = "login"
) -> Callable[[str, Request], Awaitable[None]]:
    """`await limiter(identifier, request)` counts one attempt for the account, raising
    QuotaExceededError once its budget is spent (the shape `Resources.login_limiter` takes).
    """
    prefix = f"{scope}|{policy.name}|"

    async def limit(identifier: str, request: Request) -> None:
        decision = await backend.hit(prefix + account_key(identifier), policy)
        if not decision.allowed:
            raise QuotaExceededError(decision)

    return limit
