"""Build the limiter from Settings (the middleware itself takes plain arguments)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from starlette.middleware import Middleware
from starlette.requests import Request

from stalwart.policies.rate_limit.backend import RateLimitBackend
from stalwart.policies.rate_limit.memory import MemoryBackend
from stalwart.policies.rate_limit.middleware import RateLimitMiddleware, RouteLimit
from stalwart.policies.rate_limit.policy import Policy, parse_policy
from stalwart.policies.rate_limit.redis import RedisBackend
from stalwart.policies.rate_limit.responses import account_limiter
from stalwart.settings import Settings

__all__ = [
    "LOGIN_METHOD",
    "LOGIN_PATH",
    "backend_from_settings",
    "configured_policy",
    "login_account_limiter",
    "login_account_policy",
    "rate_limit_middleware",
    "route_limits_from_settings",
    "unsplittable_budgets",
]

LOGIN_METHOD = "POST"
LOGIN_PATH = "/api/v1/auth/tokens"


def backend_from_settings(settings: Settings, redis: Redis | None = None) -> RateLimitBackend:
    """The configured backend: "auto" is Redis when a client or `redis_url` is there, else memory.

    Pass the service's shared client as `redis`; without one a client is made from
    `redis_url` and closing it is up to the caller (`backend.redis.aclose()`).
    """
    kind = settings.rate_limit_backend
    if kind == "auto":
        kind = "redis" if redis is not None or settings.redis_url else "memory"
    if kind == "memory":
        return MemoryBackend()
    if redis is None:
        if not settings.redis_url:
            raise ValueError("STALWART_RATE_LIMIT_BACKEND=redis needs STALWART_REDIS_URL")
        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
        )
    return RedisBackend(
        redis,
        prefix=settings.rate_limit_key_prefix,
        timeout=settings.redis_timeout,
        fail_open=settings.rate_limit_fail_open,
        lease_divisor=settings.rate_limit_lease_divisor,
    )


def configured_policy(settings: Settings, text: str) -> Policy:
    """A budget from the settings, as this process enforces it.

    Workers that share no counters (`--workers N` without Redis) each admit 1/N of it, so
    together they never admit more than the policy allows; a client whose requests all reach
    one worker gets 1/N. Redis gives every worker and instance the whole budget, counted once.
    """
    policy = parse_policy(text)
    divisor = settings.budget_divisor
    if divisor == 1:
        return policy
    return Policy(limit=max(1, policy.limit // divisor), window=policy.window)


def unsplittable_budgets(settings: Settings, workers: int) -> list[str]:
    """Budgets that `workers` processes sharing no counters cannot split (fewer hits than them).

    Each worker admits at least one hit, so together they would admit more than the budget.
    """
    if workers <= 1 or settings.rate_limits_shared:
        return []
    problems = []
    for name, text in (
        ("STALWART_RATE_LIMIT", settings.rate_limit),
        ("STALWART_RATE_LIMIT_LOGIN", settings.rate_limit_login),
        ("STALWART_RATE_LIMIT_LOGIN_ACCOUNT", settings.rate_limit_login_account),
        ("STALWART_RATE_LIMIT_MONITORING", settings.rate_limit_monitoring),
    ):
        if parse_policy(text).limit < workers:
            problems.append(
                f"{name} ({text}) cannot be split between {workers} workers that share no counters:"
                " set STALWART_REDIS_URL (with the auto or redis backend), or run fewer workers"
            )
    return problems


def route_limits_from_settings(settings: Settings) -> list[RouteLimit]:
    monitoring = configured_policy(settings, settings.rate_limit_monitoring)
    return [
        RouteLimit(LOGIN_METHOD, LOGIN_PATH, configured_policy(settings, settings.rate_limit_login)),
        RouteLimit("GET", "/api/monitor", monitoring),
        RouteLimit("GET", "/metrics", monitoring),
    ]


def login_account_policy(settings: Settings) -> Policy:
    """The per-account login budget, applied by the login handler with `backend.hit`."""
    return configured_policy(settings, settings.rate_limit_login_account)


def login_account_limiter(settings: Settings, backend: RateLimitBackend) -> Callable[[str, Request], Awaitable[None]]:
    """The per-account login budget as `Resources.login_limiter` takes it (raises 429)."""
    return account_limiter(backend, login_account_policy(settings), "login")


def rate_limit_middleware(settings: Settings, resources: Any = None) -> Middleware:
    """The slot-9 middleware for `settings`.

    Uses `resources.rate_limiter` when the service's Resources has one (so the login route
    and the middleware share a backend), else a backend on `resources.redis`.
    """
    backend = getattr(resources, "rate_limiter", None)
    if not isinstance(backend, RateLimitBackend):
        backend = backend_from_settings(settings, getattr(resources, "redis", None))
    return Middleware(
        RateLimitMiddleware,
        backend,
        policy=configured_policy(settings, settings.rate_limit),
        routes=route_limits_from_settings(settings),
        ipv6_prefix=settings.rate_limit_ipv6_prefix,
    )
