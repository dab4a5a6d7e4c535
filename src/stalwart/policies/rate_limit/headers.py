"""RateLimit and RateLimit-Policy fields (IETF httpapi ratelimit-headers draft, structured form).

Shape as express-rate-limit's `draft-8` mode: `RateLimit-Policy: "100-in-15min";q=100;w=900`
and `RateLimit: "100-in-15min";r=99;t=900`, `t` being whole seconds until the window resets.
"""

from __future__ import annotations

from math import ceil

from stalwart.policies.rate_limit.policy import Decision, Policy

__all__ = ["PolicyHeaders", "rate_limit_headers", "seconds_until_reset"]


def seconds_until_reset(decision: Decision) -> int:
    # Rounded up, so a client that waits this long finds the window reset.
    return max(1, ceil(decision.reset_after))


class PolicyHeaders:
    """The header bytes of one policy, built once; only `r` and `t` are formatted per request."""

    __slots__ = ("policy", "policy_header", "state_prefix")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.policy_header = (
            b"ratelimit-policy",
            f'"{policy.name}";q={policy.limit};w={policy.window}'.encode(),
        )
        self.state_prefix = f'"{policy.name}";r='.encode()

    def for_decision(self, decision: Decision) -> list[tuple[bytes, bytes]]:
        """Headers for a response under `decision` (plus Retry-After when it refuses)."""
        allowed, remaining, reset_after, _, degraded = decision
        if degraded:
            # The store was not asked, so there is no remaining count to report.
            return [self.policy_header]
        # Rounded up, so a client that waits this long finds the window reset.
        reset = ceil(reset_after) or 1
        state = (b"ratelimit", self.state_prefix + b"%d;t=%d" % (remaining, reset))
        if allowed:
            return [self.policy_header, state]
        return [self.policy_header, state, (b"retry-after", b"%d" % reset)]


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """The same headers as a dict, for a route handler's response or HTTPException."""
    names = {b"ratelimit-policy": "RateLimit-Policy", b"ratelimit": "RateLimit"}
    return {
        names.get(name, "Retry-After"): value.decode()
        for name, value in PolicyHeaders(decision.policy).for_decision(decision)
    }
