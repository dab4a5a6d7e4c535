"""ISO 8601 UTC timestamps with millisecond precision, cheap enough for one per request."""

from __future__ import annotations

import time

__all__ = ["utc_timestamp"]

# The formatted second changes once a second; requests in the same second reuse it, which
# saves the strftime (the bulk of the cost) on a busy server.
_cached: tuple[int, str] = (-1, "")
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def utc_timestamp(created: float) -> str:
    """`created` (seconds since the epoch) as `2025-01-02T03:04:05.678Z`."""
    global _cached
    seconds = int(created)
    cached_seconds, prefix = _cached
    if cached_seconds != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _cached = (seconds, prefix)
    return prefix + _MILLIS[int((created - seconds) * 1000)]
