"""Quota policies: "100/15minutes" -> Policy(limit=100, window=900.0, name="100-in-15min")."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Decision", "Policy", "format_window", "parse_policy"]

_UNITS: dict[str, int] = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}

_POLICY_RE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d+)?\s*([a-z]+)\s*$", re.IGNORECASE)


def format_window(seconds: int) -> str:
    """The largest whole unit: 900 -> "15min", 3600 -> "1h", 30 -> "30s"."""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class Policy:
    """`limit` requests per `window` seconds; `name` is the draft's quota-policy item name."""

    limit: int
    window: int
    name: str = field(default="")

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("a rate limit policy allows at least one request")
        if self.window < 1:
            raise ValueError("a rate limit window is at least one second")
        if not self.name:
            object.__setattr__(self, "name", f"{self.limit}-in-{format_window(self.window)}")
        if '"' in self.name or "\\" in self.name:
            raise ValueError("a policy name is a structured-field string without quotes")

    @property
    def window_ms(self) -> int:
        return self.window * 1000


def parse_policy(text: str) -> Policy:
    """Parse "100/15minutes", "10/minute", "5/15min", "1000/hour", "50/30s" (also "10 per hour")."""
    match = _POLICY_RE.match(text)
    if match is None:
        raise ValueError(f"invalid rate limit {text!r}; expected e.g. '100/15minutes'")
    limit, count, unit = match.groups()
    size = _UNITS.get(unit.lower())
    if size is None:
        raise ValueError(f"invalid rate limit unit {unit!r} in {text!r}")
    return Policy(limit=int(limit), window=int(count or 1) * size)


class Decision(NamedTuple):
    """The outcome of one hit.

    `remaining` is what is left after this hit; `reset_after` is seconds until the window
    resets. `degraded` means the backend could not be asked (fail-open or fail-closed).
    """

    allowed: bool
    remaining: int
    reset_after: float
    policy: Policy
    degraded: bool = False
