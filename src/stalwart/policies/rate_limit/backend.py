"""What the middleware and route handlers need from a rate-limit store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from stalwart.policies.rate_limit.policy import Decision, Policy

__all__ = ["STATS", "RateLimitBackend", "RateLimitStats"]


@dataclass
class RateLimitStats:
    """Process-wide counters for the metrics endpoint (every backend adds to these)."""

    hits: int = 0
    rejections: int = 0
    # Hits decided without asking the store (it was unreachable or too slow).
    errors: int = 0


STATS = RateLimitStats()


@runtime_checkable
class RateLimitBackend(Protocol):
    """A fixed-window counter store.

    `hit` counts one request against `key` under `policy` and says whether it is allowed.
    Route handlers use it directly for budgets the middleware cannot see (per account).
    Per-instance counters: `hits`, `rejections`, `errors`.
    """

    hits: int
    rejections: int
    errors: int

    async def hit(self, key: str, policy: Policy) -> Decision: ...

    async def aclose(self) -> None: ...
