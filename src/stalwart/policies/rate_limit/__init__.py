"""Rate limiting: 100 requests per 15 minutes per client address by default.

`RateLimitMiddleware(app, backend, policy=..., routes=[...])` limits every request but the
health probes; `backend.hit(key, policy)` lets a route handler apply a budget of its own
(the login route's per-account limit). Backends: `MemoryBackend` (one process) and
`RedisBackend` (shared by every worker and instance).
"""

from __future__ import annotations

from stalwart.policies.rate_limit.backend import STATS, RateLimitBackend, RateLimitStats
from stalwart.policies.rate_limit.factory import (
    LOGIN_METHOD,
    LOGIN_PATH,
    backend_from_settings,
    login_account_limiter,
    login_account_policy,
    rate_limit_middleware,
    route_limits_from_settings,
)
from stalwart.policies.rate_limit.headers import PolicyHeaders, rate_limit_headers
from stalwart.policies.rate_limit.keys import account_key, client_key
from stalwart.policies.rate_limit.memory import MemoryBackend
from stalwart.policies.rate_limit.middleware import (
    DEFAULT_EXEMPT_PATHS,
    RateLimitMiddleware,
    RouteLimit,
)
from stalwart.policies.rate_limit.policy import Decision, Policy, parse_policy
from stalwart.policies.rate_limit.redis import RedisBackend
from stalwart.policies.rate_limit.responses import QuotaExceededError, account_limiter, quota_exceeded

__all__ = [
    "DEFAULT_EXEMPT_PATHS",
    "LOGIN_METHOD",
    "LOGIN_PATH",
    "STATS",
    "Decision",
    "MemoryBackend",
    "Policy",
    "PolicyHeaders",
    "QuotaExceededError",
    "RateLimitBackend",
    "RateLimitMiddleware",
    "RateLimitStats",
    "RedisBackend",
    "RouteLimit",
    "account_key",
    "account_limiter",
    "backend_from_settings",
    "client_key",
    "login_account_limiter",
    "login_account_policy",
    "parse_policy",
    "quota_exceeded",
    "rate_limit_headers",
    "rate_limit_middleware",
    "route_limits_from_settings",
]
