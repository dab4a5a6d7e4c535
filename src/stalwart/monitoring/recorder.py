"""The per-process request figures, recorded on the hot path in plain Python structures.

One `record()` call per request costs well under a microsecond: a dict increment for the
lifetime counter, a list increment for the lifetime histogram, and a few attribute updates
on the route's current 5-second slot. Nothing is locked: every request of a process runs on
its one event loop thread, and so do `snapshot()` and the publisher.

Lifetime counters feed `/metrics`; the slots (kept for 15 minutes) feed the 1/5/15-minute
rates, error rates and percentiles of `/api/monitor`. Labels are bounded: route templates
(or `<unmatched>`), a fixed set of methods, status classes; past `max_routes` distinct
templates everything else is counted under `<other>`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any

from stalwart.monitoring.histogram import BOUNDS, N_BUCKETS

__all__ = [
    "KNOWN_METHODS",
    "OTHER_ROUTE",
    "SLOT_SECONDS",
    "UNMATCHED_ROUTE",
    "WINDOW_SLOTS",
    "RequestMetrics",
    "method_label",
]

SLOT_SECONDS = 5
WINDOW_SLOTS = 15 * 60 // SLOT_SECONDS
UNMATCHED_ROUTE = "<unmatched>"
OTHER_ROUTE = "<other>"
KNOWN_METHODS: dict[str, str] = {
    m: m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


def method_label(method: str) -> str:
    """The method, or "OTHER" for anything outside the standard set (clients choose methods)."""
    return KNOWN_METHODS.get(method, "OTHER")


class _Slot:
    __slots__ = ("hist", "id", "max", "n", "n4", "n5", "sum")

    def __init__(self, slot_id: int) -> None:
        self.id = slot_id
        self.n = 0
        self.n4 = 0
        self.n5 = 0
        self.sum = 0.0
        self.max = 0.0
        self.hist: dict[int, int] = {}


class _Route:
    __slots__ = ("hist", "slot", "slots", "sum")

    def __init__(self) -> None:
        self.hist = [0] * N_BUCKETS
        self.sum = 0.0
        self.slot = _Slot(-1)
        self.slots: deque[_Slot] = deque(maxlen=WINDOW_SLOTS)


class RequestMetrics:
    """Counters, histograms and 5-second slots per route template, for one process."""

    def __init__(self, *, max_routes: int = 500, clock: Callable[[], float] = time.time) -> None:
        self.max_routes = max_routes
        self.clock = clock
        self.in_flight = 0
        self.counts: dict[tuple[str, str, int], int] = {}
        self._routes: dict[str, _Route] = {}

    def _route(self, route: str) -> tuple[str, _Route]:
        if len(self._routes) >= self.max_routes:
            route = OTHER_ROUTE
        series = self._routes.get(route)
        if series is None:
            series = self._routes[route] = _Route()
        return route, series

    def record(self, route: str, method: str, status: int, duration: float) -> None:
        """Count one finished request (`duration` in seconds)."""
        series = self._routes.get(route)
        if series is None:
            route, series = self._route(route)
        status_class = status // 100
        key = (route, method, status_class)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        bucket = bisect_left(BOUNDS, duration)
        series.hist[bucket] += 1
        series.sum += duration
        slot_id = int(self.clock()) // SLOT_SECONDS
        slot = series.slot
        if slot.id != slot_id:
            slot = series.slot = _Slot(slot_id)
            series.slots.append(slot)
        slot.n += 1
        if status_class == 5:
            slot.n5 += 1
        elif status_class == 4:
            slot.n4 += 1
        slot.sum += duration
        if duration > slot.max:
            slot.max = duration
        hist = slot.hist
        hist[bucket] = hist.get(bucket, 0) + 1

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """A JSON-ready copy of the figures (slots older than 15 minutes left out)."""
        now = self.clock() if now is None else now
        oldest = int(now) // SLOT_SECONDS - WINDOW_SLOTS + 1
        routes: dict[str, Any] = {}
        for route, series in self._routes.items():
            routes[route] = {
                "sum": series.sum,
                "hist": [[i, c] for i, c in enumerate(series.hist) if c],
                "slots": [
                    [s.id, s.n, s.n4, s.n5, s.sum, s.max, [[b, c] for b, c in s.hist.items()]]
                    for s in series.slots
                    if s.id >= oldest
                ],
            }
        return {
            "in_flight": self.in_flight,
            "counts": [[r, m, c, n] for (r, m, c), n in self.counts.items()],
            "routes": routes,
        }
