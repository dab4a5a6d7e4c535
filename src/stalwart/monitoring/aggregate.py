"""Merge request figures from every live process and read windows, percentiles and timelines.

Each process's `RequestMetrics.snapshot()` is a plain dict; the sum of several is again
exact for counts and histograms (percentiles are read from the merged buckets, never
averaged across processes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stalwart.monitoring.histogram import N_BUCKETS, percentile
from stalwart.monitoring.recorder import SLOT_SECONDS

__all__ = ["WINDOWS", "MergedMetrics", "TimelinePoint", "WindowStats"]

WINDOWS: tuple[tuple[str, int], ...] = (("1m", 60), ("5m", 300), ("15m", 900))


@dataclass
class WindowStats:
    requests: int
    rate_per_second: float
    errors_4xx: int
    errors_5xx: int
    error_rate_4xx: float
    error_rate_5xx: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass
class TimelinePoint:
    t: float
    requests: int
    rate_per_second: float
    p95_ms: float | None
    error_rate_4xx: float
    error_rate_5xx: float


@dataclass
class _SlotSum:
    n: int = 0
    n4: int = 0
    n5: int = 0
    sum: float = 0.0
    max: float = 0.0
    hist: dict[int, int] = field(default_factory=dict)

    def add(self, n: int, n4: int, n5: int, total: float, top: float, hist: Iterable[Any]) -> None:
        self.n += n
        self.n4 += n4
        self.n5 += n5
        self.sum += total
        self.max = max(self.max, top)
        for bucket, count in hist:
            self.hist[int(bucket)] = self.hist.get(int(bucket), 0) + int(count)


@dataclass
class _RouteSum:
    sum: float = 0.0
    hist: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    slots: dict[int, _SlotSum] = field(default_factory=dict)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class MergedMetrics:
    """The request figures of several processes added together."""

    def __init__(self, snapshots: Iterable[Mapping[str, Any]], *, now: float, since: float) -> None:
        """`since`: when the earliest of these processes started (rates never divide by time
        before it)."""
        self.now = now
        self.since = since
        self.in_flight = 0
        self.counts: dict[tuple[str, str, int], int] = {}
        self.routes: dict[str, _RouteSum] = {}
        for snap in snapshots:
            self._add(snap)

    def _add(self, snap: Mapping[str, Any]) -> None:
        self.in_flight += int(snap.get("in_flight", 0))
        for route, method, status_class, n in snap.get("counts", ()):
            key = (str(route), str(method), int(status_class))
            self.counts[key] = self.counts.get(key, 0) + int(n)
        for route, data in snap.get("routes", {}).items():
            merged = self.routes.setdefault(str(route), _RouteSum())
            merged.sum += float(data.get("sum", 0.0))
            for bucket, count in data.get("hist", ()):
                merged.hist[int(bucket)] += int(count)
            for slot_id, n, n4, n5, total, top, hist in data.get("slots", ()):
                merged.slots.setdefault(int(slot_id), _SlotSum()).add(
                    int(n), int(n4), int(n5), float(total), float(top), hist
                )

    # --- lifetime totals ---------------------------------------------------------------------
    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_status_class(self, route: str | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for (r, _m, c), n in self.counts.items():
            if route is None or r == route:
                out[f"{c}xx"] = out.get(f"{c}xx", 0) + n
        return dict(sorted(out.items()))

    def by_method(self, route: str | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for (r, m, _c), n in self.counts.items():
            if route is None or r == route:
                out[m] = out.get(m, 0) + n
        return dict(sorted(out.items()))

    def route_total(self, route: str) -> int:
        return sum(n for (r, _m, _c), n in self.counts.items() if r == route)

    # --- windows -----------------------------------------------------------------------------
    def _slots(self, route: str | None) -> Iterable[tuple[int, _SlotSum]]:
        series = self.routes.values() if route is None else [self.routes[route]]
        for s in series:
            yield from s.slots.items()

    def window(self, seconds: int, route: str | None = None) -> WindowStats:
        """Requests finished in the last `seconds` (to the slot), for one route or all."""
        current = int(self.now) // SLOT_SECONDS
        first = current - seconds // SLOT_SECONDS + 1
        acc = _SlotSum()
        if route is None or route in self.routes:
            for slot_id, slot in self._slots(route):
                if first <= slot_id <= current:
                    acc.add(slot.n, slot.n4, slot.n5, slot.sum, slot.max, slot.hist.items())
        start = max(first * SLOT_SECONDS, self.since)
        covered = max(self.now - start, 1.0)
        n = acc.n
        top = acc.max if n else None
        return WindowStats(
            requests=n,
            rate_per_second=round(n / covered, 4),
            errors_4xx=acc.n4,
            errors_5xx=acc.n5,
            error_rate_4xx=round(acc.n4 / n, 4) if n else 0.0,
            error_rate_5xx=round(acc.n5 / n, 4) if n else 0.0,
            p50_ms=_ms(percentile(acc.hist, 0.50, top)),
            p95_ms=_ms(percentile(acc.hist, 0.95, top)),
            p99_ms=_ms(percentile(acc.hist, 0.99, top)),
            max_ms=_ms(top),
        )

    def windows(self, route: str | None = None) -> dict[str, WindowStats]:
        return {name: self.window(seconds, route) for name, seconds in WINDOWS}

    def timeline(self, seconds: int = 900) -> list[TimelinePoint]:
        """One point per 5-second slot since the service started, all routes merged.

        The last point is the slot in progress; its rate divides by the time elapsed in it.
        """
        current = int(self.now) // SLOT_SECONDS
        first = max(current - seconds // SLOT_SECONDS + 1, int(self.since) // SLOT_SECONDS)
        merged: dict[int, _SlotSum] = {}
        for slot_id, slot in self._slots(None):
            if first <= slot_id <= current:
                merged.setdefault(slot_id, _SlotSum()).add(
                    slot.n, slot.n4, slot.n5, slot.sum, slot.max, slot.hist.items()
                )
        points: list[TimelinePoint] = []
        for slot_id in range(first, current + 1):
            slot = merged.get(slot_id) or _SlotSum()
            n = slot.n
            start = max(float(slot_id * SLOT_SECONDS), self.since)
            end = min(float((slot_id + 1) * SLOT_SECONDS), self.now)
            elapsed = max(end - start, 1.0)
            points.append(
                TimelinePoint(
                    t=float(slot_id * SLOT_SECONDS),
                    requests=n,
                    rate_per_second=round(n / elapsed, 4),
                    p95_ms=_ms(percentile(slot.hist, 0.95, slot.max if n else None)),
                    error_rate_4xx=round(slot.n4 / n, 4) if n else 0.0,
                    error_rate_5xx=round(slot.n5 / n, 4) if n else 0.0,
                )
            )
        return points
