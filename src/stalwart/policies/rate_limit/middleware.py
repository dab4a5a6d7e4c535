"""Rate limiting as pure ASGI middleware: one budget per client address, per policy.

The limiter runs before routing, so per-route policies are matched on the raw method and
path, resolved at start-up into a dict for exact paths (one lookup per request), then
prefixes (`/api/v1/admin/*`), then templates (`/api/v1/notes/{id}`), in that order. A
matching route policy replaces the global one and has a budget of its own.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from math import ceil
from typing import NamedTuple

from starlette.types import ASGIApp, Receive, Scope, Send

from stalwart.policies.exchange import watch
from stalwart.policies.problem import problem_type, send_problem
from stalwart.policies.rate_limit.backend import RateLimitBackend
from stalwart.policies.rate_limit.headers import PolicyHeaders
from stalwart.policies.rate_limit.keys import NO_CLIENT, ipv6_key
from stalwart.policies.rate_limit.memory import MemoryBackend
from stalwart.policies.rate_limit.policy import Decision, Policy
from stalwart.policies.rate_limit.redis import RedisBackend

__all__ = ["DEFAULT_EXEMPT_PATHS", "RateLimitMiddleware", "RouteLimit"]

# Load-balancer probes must never be refused: a limited probe takes the instance out.
DEFAULT_EXEMPT_PATHS: frozenset[str] = frozenset({"/health", "/health/live", "/health/ready"})

_TEMPLATE_PARAM = re.compile(r"\{[^/{}]+\}")


class RouteLimit(NamedTuple):
    """`policy` for requests whose method is `method` ("*": any) and whose path matches `path`.

    `path` is exact ("/api/v1/auth/tokens"; a trailing slash variant matches too), a prefix
    ending in "*" ("/api/v1/admin/*"), or a route template ("/api/v1/notes/{note_id}").
    A plain `(method, path, policy)` tuple is accepted wherever a RouteLimit is.
    """

    method: str
    path: str
    policy: Policy


class _Rule:
    """A budget: its key prefix and its precomputed headers."""

    __slots__ = ("headers", "key_prefix", "policy", "policy_header", "state_prefix")

    def __init__(self, scope_id: str, policy: Policy) -> None:
        self.policy = policy
        self.key_prefix = f"{scope_id}|{policy.name}|"
        self.headers = PolicyHeaders(policy)
        # Copied out for the allowed-request fast path in RateLimitMiddleware.__call__.
        self.policy_header = self.headers.policy_header
        self.state_prefix = self.headers.state_prefix


class RateLimitMiddleware:
    """Count every HTTP request but `exempt_paths` against its client's budget.

    `policy` applies to every path without a matching entry in `routes`. Client addresses
    come from scope["client"] (already resolved by the trusted-proxies middleware); IPv6
    clients share the budget of their `/ipv6_prefix` network. Allowed responses get the
    RateLimit-Policy and RateLimit fields; a spent budget gets a 429 problem with
    Retry-After; a store that is down and fail-closed gets a 503 problem.
    """

    def __init__(
        self,
        app: ASGIApp,
        backend: RateLimitBackend | None = None,
        *,
        policy: Policy,
        routes: Iterable[RouteLimit | tuple[str, str, Policy]] = (),
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        ipv6_prefix: int = 56,
        retry_after_unavailable: int = 1,
    ) -> None:
        self.app = app
        self.backend: RateLimitBackend = backend if backend is not None else MemoryBackend()
        self.exempt_paths = frozenset(exempt_paths)
        self.ipv6_prefix = ipv6_prefix
        self._global = _Rule("ip", policy)
        self._exact: dict[tuple[str, str], _Rule] = {}
        self._prefixes: list[tuple[str, str, _Rule]] = []
        self._templates: list[tuple[str, re.Pattern[str], _Rule]] = []
        for item in routes:
            route = RouteLimit(*item)
            method = route.method.upper()
            rule = _Rule(f"route:{method}:{route.path}", route.policy)
            if route.path.endswith("*"):
                self._prefixes.append((method, route.path[:-1], rule))
            elif _TEMPLATE_PARAM.search(route.path):
                pattern = "".join(
                    "[^/]+" if _TEMPLATE_PARAM.fullmatch(part) else re.escape(part)
                    for part in re.split(r"(\{[^/{}]+\})", route.path.rstrip("/"))
                )
                self._templates.append((method, re.compile(pattern + "/?"), rule))
            else:
                path = route.path.rstrip("/") or "/"
                self._exact.setdefault((method, path), rule)
        self._has_routes = bool(self._exact or self._prefixes or self._templates)
        self._unavailable_headers = [(b"retry-after", b"%d" % retry_after_unavailable)]
        # The memory backend never awaits, and the Redis one decides most hits of a large
        # budget from its lease: skipping the coroutine is measurable per request.
        self._hit_nowait: Callable[[str, Policy], Decision | None] | None = (
            self.backend.hit_nowait if isinstance(self.backend, MemoryBackend | RedisBackend) else None
        )

    @property
    def rejections(self) -> int:
        return self.backend.rejections

    def _rule(self, method: str, path: str) -> _Rule:
        exact = self._exact
        if exact:
            # "/api/v1/auth/tokens/" must not be a fresh budget for "/api/v1/auth/tokens".
            stripped = (path.rstrip("/") or "/") if path.endswith("/") else path
            rule = exact.get((method, stripped)) or exact.get(("*", stripped))
            if rule is not None:
                return rule
        for rule_method, prefix, rule in self._prefixes:
            if (rule_method == "*" or rule_method == method) and path.startswith(prefix):
                return rule
        for rule_method, pattern, rule in self._templates:
            if (rule_method == "*" or rule_method == method) and pattern.fullmatch(path):
                return rule
        return self._global

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the inner app's awaitable: one coroutine frame less per
        # request than `async def` (see policies/exchange.py on the per-layer costs). Only a
        # backend that awaits (Redis) needs a coroutine, `_ask_store`.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        path = scope["path"]
        if path in self.exempt_paths:
            return self.app(scope, receive, send)
        if self._has_routes:
            method = scope["method"]
            # HEAD is answered as GET (api/methods.py): it counts against GET's budget.
            rule = self._rule("GET" if method == "HEAD" else method, path)
        else:
            rule = self._global
        client = scope.get("client")
        host = client[0] if client else None
        if not host:
            key = rule.key_prefix + NO_CLIENT
        elif ":" in host:
            key = rule.key_prefix + ipv6_key(host, self.ipv6_prefix)
        else:
            key = rule.key_prefix + host
        hit_nowait = self._hit_nowait
        if hit_nowait is not None:
            decision = hit_nowait(key, rule.policy)
            if decision is not None:
                return self._decide(scope, receive, send, rule, decision)
        return self._ask_store(scope, receive, send, rule, key)

    async def _ask_store(self, scope: Scope, receive: Receive, send: Send, rule: _Rule, key: str) -> None:
        await self._decide(scope, receive, send, rule, await self.backend.hit(key, rule.policy))

    def _decide(self, scope: Scope, receive: Receive, send: Send, rule: _Rule, decision: Decision) -> Awaitable[None]:
        allowed, remaining, reset_after, _, degraded = decision
        if allowed and not degraded:
            # The common case, built here rather than by PolicyHeaders.for_decision (same
            # bytes): one formatting of the two numbers after the prebuilt prefix.
            exchange, send = watch(scope, send)
            exchange.headers += (
                rule.policy_header,
                (b"ratelimit", rule.state_prefix + b"%d;t=%d" % (remaining, ceil(reset_after) or 1)),
            )
            return self.app(scope, receive, send)
        headers = rule.headers.for_decision(decision)
        if not allowed:
            if degraded:
                return send_problem(
                    scope,
                    send,
                    503,
                    title="Service Unavailable",
                    detail="The request quota cannot be checked right now; retry shortly.",
                    type_=problem_type("service-unavailable"),
                    headers=[*headers, *self._unavailable_headers],
                )
            return send_problem(
                scope,
                send,
                429,
                title="Too Many Requests",
                detail=f"Request quota {rule.policy.name} exceeded; see Retry-After.",
                type_=problem_type("quota-exceeded"),
                headers=headers,
                extra={"violated-policies": [rule.policy.name]},
            )
        # Allowed without asking the store (fail-open): the policy header only.
        exchange, send = watch(scope, send)
        exchange.headers += headers
        return self.app(scope, receive, send)
