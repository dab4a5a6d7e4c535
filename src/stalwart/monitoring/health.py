"""Readiness checks in the IETF health-check draft format (`application/health+json`).

draft-inadarei-api-health-check: `status` pass/warn/fail, `version`, `releaseId`,
`serviceId`, `description`, and `checks` keyed `component:measurement`, each a list of
`{componentType, observedValue, observedUnit, status, time}` (plus `output` with a fixed
word when a check fails: never an exception message, which could name a host).

The dependency checks (database, Redis) run concurrently, each bounded by
`health_check_timeout`; disk and memory are read at the same time. A ping that times out is
reported at once but left to end on the driver's own timeouts (never cancelled part-way), and
`close()` waits for it before the pools are closed. The result is kept for
`health_cache_seconds`, and concurrent probes share one check in progress (single flight),
so a flood of probes costs the database at most one `SELECT 1` per second. Whether the
service is shutting down is read on every probe: readiness turns 503 at once.

Statuses:
- database: fail when it does not answer in time; warn when it takes over half the timeout.
- redis: when down, fail if the rate limiter fails closed (every request would be refused),
  warn otherwise (the service still works, only sharing degrades).
- disk:free under data_dir: warn below `health_min_free_disk_mb`, fail below a quarter of it.
- memory:rss: warn from `alert_rss_mb`, fail from `memory_limit_mb`.
- process:shutdown: fail while draining.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from stalwart import __version__
from stalwart.background import cancel_all
from stalwart.policies.timestamps import utc_timestamp
from stalwart.settings import Settings

__all__ = ["HEALTH_CONTENT_TYPE", "Check", "HealthChecker", "HealthReport", "worst"]

HEALTH_CONTENT_TYPE = "application/health+json"
Status = Literal["pass", "warn", "fail"]
_RANK: dict[str, int] = {"pass": 0, "warn": 1, "fail": 2}
_MIB = 1024 * 1024
# How long close() lets a ping still running end by itself.
_CLOSE_GRACE_SECONDS = 2.0


def worst(statuses: list[str]) -> Status:
    top = max((_RANK[s] for s in statuses), default=0)
    return ("pass", "warn", "fail")[top]


@dataclass
class Check:
    component_type: str
    observed_value: float | bool | None
    observed_unit: str
    status: Status
    time: float
    output: str | None = None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "componentType": self.component_type,
            "observedValue": self.observed_value,
            "observedUnit": self.observed_unit,
            "status": self.status,
            "time": utc_timestamp(self.time),
        }
        if self.output is not None:
            body["output"] = self.output
        return body


@dataclass
class HealthReport:
    status: Status
    checks: dict[str, Check] = field(default_factory=dict)

    def body(self, settings: Settings) -> dict[str, Any]:
        return {
            "status": self.status,
            "version": __version__.split(".")[0],
            "releaseId": settings.release_id or __version__,
            "serviceId": settings.service_id,
            "description": "Stalwart notes API",
            "checks": {key: [check.as_dict()] for key, check in self.checks.items()},
        }


Ping = Callable[[], Awaitable[Any]]


async def _call(ping: Ping) -> Any:
    return await ping()


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent (the data folder may not exist yet)."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class HealthChecker:
    """Cached, single-flight readiness checks for one process."""

    def __init__(self, settings: Settings, *, rss: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self.db_ping: Ping | None = None
        self.redis_ping: Ping | None = None
        self.shutting_down: Callable[[], bool] = lambda: False
        self._rss = rss or (lambda: int(psutil.Process().memory_info().rss))
        self._cached: dict[str, Check] | None = None
        self._cached_at = -1.0e9
        self._inflight: asyncio.Future[dict[str, Check]] | None = None
        # The ping running for each dependency (at most one each; see _timed).
        self._pings: dict[str, asyncio.Task[Any]] = {}
        self.runs = 0  # checks actually run (not served from the cache), for tests and metrics

    def bind(
        self, *, db_ping: Ping, redis_ping: Ping | None, shutting_down: Callable[[], bool]
    ) -> None:
        self.db_ping = db_ping
        self.redis_ping = redis_ping
        self.shutting_down = shutting_down

    async def _timed(self, ping: Ping, component: str) -> tuple[float, str | None]:
        started = time.perf_counter()
        task = self._pings.get(component)
        if task is None:
            # A task of its own that the timeout does not cancel. Cancelling a database call
            # part-way makes SQLAlchemy close the connection in a shielded task of its own,
            # which nothing waited for: it outlived close() and the pool's disposal, and a
            # second cancellation (the event loop's at exit) stopped the aiosqlite thread
            # under it, so it never finished (the loop's shutdown hung). Left running, the
            # ping ends on the driver's own timeouts; while it runs, later checks wait on it
            # instead of piling up more pings on a stalled dependency.
            task = asyncio.create_task(_call(ping), name=f"health-ping:{component}")
            self._pings[component] = task
            task.add_done_callback(functools.partial(self._ping_done, component))
        done, _ = await asyncio.wait({task}, timeout=self.settings.health_check_timeout)
        elapsed = (time.perf_counter() - started) * 1000
        if not done:
            return elapsed, "timeout"
        if task.cancelled() or task.exception() is not None:
            # Any failure of the dependency reads as "unreachable", nothing more.
            return elapsed, "unreachable"
        return elapsed, None

    def _ping_done(self, component: str, task: asyncio.Task[Any]) -> None:
        if self._pings.get(component) is task:
            del self._pings[component]
        if not task.cancelled():
            task.exception()  # retrieved: its outcome is the check's, reported by _timed

    async def _run(self) -> dict[str, Check]:
        self.runs += 1
        settings = self.settings
        now = time.time()
        checks: dict[str, Check] = {}
        slow_ms = settings.health_check_timeout * 1000 / 2
        pings: list[tuple[str, Ping]] = []
        if self.db_ping is not None:
            pings.append(("database", self.db_ping))
        if self.redis_ping is not None:
            pings.append(("redis", self.redis_ping))
        results = await asyncio.gather(*(self._timed(ping, name) for name, ping in pings))
        for (name, _), (elapsed, error) in zip(pings, results, strict=True):
            status: Status = "pass"
            if error is not None:
                status = "warn" if name == "redis" and settings.rate_limit_fail_open else "fail"
            elif elapsed > slow_ms:
                status = "warn"
            checks[f"{name}:responseTime"] = Check(
                "datastore", round(elapsed, 3), "ms", status, now, output=error
            )
        try:
            free_mib = shutil.disk_usage(_existing(settings.data_dir)).free / _MIB
            floor = settings.health_min_free_disk_mb
            disk: Status = (
                "fail" if free_mib < floor / 4 else "warn" if free_mib < floor else "pass"
            )
            checks["disk:free"] = Check("system", round(free_mib, 1), "MiB", disk, now)
        except OSError:
            checks["disk:free"] = Check("system", None, "MiB", "warn", now, output="unreadable")
        rss_mib = self._rss() / _MIB
        memory: Status = (
            "fail" if rss_mib >= settings.memory_limit_mb
            else "warn" if rss_mib >= settings.alert_rss_mb
            else "pass"
        )
        checks["memory:rss"] = Check("system", round(rss_mib, 1), "MiB", memory, now)
        return checks

    def _finish(self, future: asyncio.Future[dict[str, Check]]) -> None:
        self._inflight = None
        if not future.cancelled() and future.exception() is None:
            self._cached = future.result()
            self._cached_at = time.monotonic()

    async def dependency_checks(self) -> dict[str, Check]:
        """The cached checks, or fresh ones (shared by every caller while they run)."""
        cached = self._cached
        age = time.monotonic() - self._cached_at
        if cached is not None and age < self.settings.health_cache_seconds:
            return cached
        future = self._inflight
        if future is None:
            future = self._inflight = asyncio.ensure_future(self._run())
            future.add_done_callback(self._finish)
        # shield: a probe whose client hangs up must not cancel the check the others wait for.
        return await asyncio.shield(future)

    async def report(self) -> HealthReport:
        checks = dict(await self.dependency_checks())
        down = self.shutting_down()
        checks["process:shutdown"] = Check(
            "system", down, "boolean", "fail" if down else "pass", time.time()
        )
        return HealthReport(worst([c.status for c in checks.values()]), checks)

    async def close(self) -> None:
        future = self._inflight
        if future is not None and not future.done():
            future.cancel()
            # asyncio.wait: a cancellation of close() itself must not be swallowed.
            await asyncio.wait({future})
        pings = [task for task in self._pings.values() if not task.done()]
        if pings:
            # Let them end on their own (see _timed) before the pools they use are closed;
            # cancelled only if the dependency hangs past the grace period.
            _, late = await asyncio.wait(pings, timeout=_CLOSE_GRACE_SECONDS)
            if late:
                await cancel_all(late)
