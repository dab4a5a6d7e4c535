"""Latency buckets shared by the recorder, the windows and the Prometheus exposition.

Bounds grow by 2^(1/4) (about 19 %) from 62.5 µs to 65.5 s, so a percentile read from the
buckets is within about 10 % of the exact value, while a whole histogram is 82 integers.
Every fourth bound is a power of two in milliseconds; those are the Prometheus buckets, so
`/metrics` exposes exact cumulative counts without keeping a second histogram.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping

__all__ = [
    "BOUNDS",
    "N_BUCKETS",
    "PROMETHEUS_BOUNDS",
    "bucket_of",
    "percentile",
]

BOUNDS: tuple[float, ...] = tuple(2 ** (k / 4) / 1000 for k in range(-16, 65))
"""Upper bounds in seconds: bucket i holds durations in (BOUNDS[i-1], BOUNDS[i]]."""

N_BUCKETS = len(BOUNDS) + 1
"""The last bucket holds everything above BOUNDS[-1]."""

PROMETHEUS_BOUNDS: tuple[tuple[int, float], ...] = tuple(
    (index, bound) for index, bound in enumerate(BOUNDS) if index % 4 == 0
)
"""(bucket index, upper bound in seconds) of the buckets `/metrics` exposes."""


def bucket_of(seconds: float) -> int:
    return bisect_left(BOUNDS, seconds)


def _items(counts: Mapping[int, int] | Iterable[int]) -> list[tuple[int, int]]:
    if isinstance(counts, Mapping):
        return sorted((int(k), int(v)) for k, v in counts.items() if v)
    return [(i, c) for i, c in enumerate(counts) if c]


def percentile(
    counts: Mapping[int, int] | Iterable[int], q: float, maximum: float | None = None
) -> float | None:
    """The q-quantile (0..1) in seconds, interpolated within its bucket; None when empty.

    `counts` is a dense list (index: bucket) or a sparse {bucket: count} mapping. `maximum`,
    the largest duration observed, caps the answer (the top bucket has no upper bound).
    """
    items = _items(counts)
    total = sum(count for _, count in items)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in items:
        if seen + count >= rank:
            lower = BOUNDS[index - 1] if index > 0 else 0.0
            upper = BOUNDS[index] if index < len(BOUNDS) else (maximum or BOUNDS[-1])
            value = lower + (upper - lower) * ((rank - seen) / count)
            return min(value, maximum) if maximum is not None else value
        seen += count
    return maximum
