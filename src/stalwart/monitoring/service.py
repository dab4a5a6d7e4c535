"""`Monitoring`: one per app. Owns the request recorder, the health checker, the alerts and the
three background tasks, started and stopped by the app lifespan through `Resources.start()` /
`Resources.close()`:

- sampler (every `monitor_sample_seconds`): event-loop lag and process figures. It awaits
  nothing but its sleep, so a blocked loop always shows as lag.
- alerts (every `alert_eval_seconds`): evaluates the alerts and logs transitions.
- publisher (every `metrics_publish_seconds`): this process's snapshot to the share (Redis or a
  folder), so that `/api/monitor` and `/metrics` served by any worker cover all of them.
- performance log (every `metrics_log_seconds`): one line on the `stalwart.metrics` logger with
  the service's figures over the last minute, written by the leader only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stalwart import __version__
from stalwart.background import cancel_all
from stalwart.monitoring.aggregate import MergedMetrics
from stalwart.monitoring.alerts import AlertBoard, alert_rules
from stalwart.monitoring.health import HealthChecker
from stalwart.monitoring.process import ProcessSampler
from stalwart.monitoring.recorder import RequestMetrics
from stalwart.monitoring.share import FolderShare, NoShare, RedisShare, SnapshotShare
from stalwart.policies.rate_limit.backend import STATS
from stalwart.policies.timestamps import utc_timestamp
from stalwart.settings import Settings

__all__ = ["Cluster", "Monitoring", "metrics_dir"]

logger = logging.getLogger("stalwart.monitoring")
performance_logger = logging.getLogger("stalwart.metrics")
_MIB = 1024 * 1024


def metrics_dir(settings: Settings) -> Path:
    if settings.metrics_dir is not None:
        return settings.metrics_dir
    return settings.data_dir / "metrics"


def _pool(status: dict[str, int]) -> dict[str, int]:
    """The engine pool and the hot-read pool (PostgreSQL) together."""
    return {
        "size": status.get("size", 0) + status.get("reads_size", 0),
        "in_use": status.get("checked_out", 0) + status.get("reads_in_use", 0),
        "idle": status.get("idle", 0) + status.get("reads_idle", 0),
        "overflow": status.get("overflow", 0),
    }


@dataclass
class Cluster:
    """Every live process's snapshot (this one first) and their request figures merged."""

    now: float
    snapshots: list[dict[str, Any]]
    merged: MergedMetrics
    leader: bool

    @property
    def local(self) -> dict[str, Any]:
        return self.snapshots[0]


class Monitoring:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.started_at = time.time()
        self.recorder = RequestMetrics()
        self.sampler = ProcessSampler()
        self.health = HealthChecker(settings, rss=self.sampler.rss_now)
        self.alerts = AlertBoard(alert_rules(settings), started_at=self.started_at)
        self.share: SnapshotShare = NoShare()
        self.pool_status: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lag_peak = 0.0
        self._others: list[dict[str, Any]] = []
        self._others_at = -1.0e9
        self._others_ttl = min(1.0, settings.metrics_publish_seconds / 2)
        self._others_inflight: asyncio.Future[list[dict[str, Any]]] | None = None
        self._publish_failing = False
        # One publish at a time: a later snapshot must never be overwritten by an earlier one.
        self._publish_lock = asyncio.Lock()

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self, resources: Any) -> None:
        """Bind to the app's Resources and start the background tasks."""
        settings = self.settings
        redis = getattr(resources, "redis", None)
        db = resources.db
        self.pool_status = db.pool_status
        # Looked up at each check, not bound now: the pool may be swapped (tests, reconnects).
        self.health.bind(
            db_ping=lambda: resources.db.ping(),
            redis_ping=(lambda: resources.redis.ping()) if redis is not None else None,
            shutting_down=lambda: bool(getattr(resources, "shutting_down", False)),
        )
        mode = settings.metrics_share
        if mode == "auto":
            mode = "redis" if redis is not None else "folder"
        if mode == "redis" and redis is not None:
            self.share = RedisShare(
                redis,
                prefix=settings.metrics_key_prefix,
                service=settings.service_id,
                stale_seconds=settings.metrics_stale_seconds,
                timeout=settings.redis_timeout,
            )
        elif mode in ("redis", "folder"):
            if mode == "redis":
                logger.warning("metrics_share=redis needs a redis_url: sharing through a folder")
            self.share = FolderShare(
                metrics_dir(settings), stale_seconds=settings.metrics_stale_seconds
            )
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._sample_forever(), name="stalwart-monitor-sampler"),
                asyncio.create_task(self._alert_forever(), name="stalwart-monitor-alerts"),
                asyncio.create_task(self._publish_forever(), name="stalwart-monitor-publisher"),
            ]
            if settings.metrics_log_seconds > 0:
                self._tasks.append(
                    asyncio.create_task(self._log_forever(), name="stalwart-monitor-log")
                )

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.share.remove(self.instance_id), 1.0)
        await self.health.close()
        future = self._others_inflight
        if future is not None and not future.done():
            future.cancel()
            # asyncio.wait, not `await future`: a cancellation of stop() itself must not be
            # swallowed with the future's own.
            await asyncio.wait({future})

    # --- this process ------------------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        pool: dict[str, int] = {}
        if self.pool_status is not None:
            with contextlib.suppress(Exception):
                pool = _pool(self.pool_status())
        return {
            "instance": self.instance_id,
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self.started_at,
            "time": now,
            "metrics": self.recorder.snapshot(now),
            "process": self.sampler.stats.as_dict(),
            "rss_trend": [[t, v] for t, v in self.sampler.trend],
            "pool": pool,
            "rate_limit": {
                key: int(getattr(STATS, key, 0)) for key in ("hits", "rejections", "errors")
            },
            "alerts": {
                a.name: {"state": a.state, "value": a.value, "since": a.since}
                for a in self.alerts.alerts.values()
                if a.scope == "instance"
            },
        }

    # --- every process -----------------------------------------------------------------------
    async def _read_others(self) -> list[dict[str, Any]]:
        try:
            payloads = await self.share.collect(self.instance_id)
        except Exception:
            logger.warning("cannot read the other workers' metrics (%s)", self.share.mode)
            return []
        others: list[dict[str, Any]] = []
        for payload in payloads:
            with contextlib.suppress(orjson.JSONDecodeError):
                data = orjson.loads(payload)
                if isinstance(data, dict) and data.get("instance") != self.instance_id:
                    others.append(data)
        return others

    def _others_done(self, future: asyncio.Future[list[dict[str, Any]]]) -> None:
        self._others_inflight = None
        if not future.cancelled() and future.exception() is None:
            self._others = future.result()
            self._others_at = time.monotonic()

    async def others(self) -> list[dict[str, Any]]:
        """The other live processes' snapshots (re-read at most every half publish interval)."""
        if time.monotonic() - self._others_at < self._others_ttl:
            return self._others
        future = self._others_inflight
        if future is None:
            future = self._others_inflight = asyncio.ensure_future(self._read_others())
            future.add_done_callback(self._others_done)
        return await asyncio.shield(future)

    async def cluster(self) -> Cluster:
        now = time.time()
        snapshots = [self.snapshot(now), *await self.others()]
        since = min(float(s.get("started_at", now)) for s in snapshots)
        merged = MergedMetrics((s.get("metrics", {}) for s in snapshots), now=now, since=since)
        leader = self.instance_id <= min(str(s.get("instance", "")) for s in snapshots)
        return Cluster(now=now, snapshots=snapshots, merged=merged, leader=leader)

    def alert_listing(self, cluster: Cluster) -> list[dict[str, Any]]:
        """Every alert; an instance alert fires when it fires in any live process."""
        listing: list[dict[str, Any]] = []
        for alert in self.alerts.alerts.values():
            entry: dict[str, Any] = {**alert.as_dict(), "instances": []}
            if alert.scope == "instance":
                states = [
                    (str(s.get("instance", "")), s.get("alerts", {}).get(alert.name) or {})
                    for s in cluster.snapshots
                ]
                values = [float(a["value"]) for _, a in states if a.get("value") is not None]
                firing = [(i, a) for i, a in states if a.get("state") == "firing"]
                entry["value"] = max(values) if values else None
                if firing:
                    entry["state"] = "firing"
                    entry["since"] = utc_timestamp(min(float(a["since"]) for _, a in firing))
                    entry["instances"] = sorted(i for i, _ in firing)
            listing.append(entry)
        return listing

    # --- background work ---------------------------------------------------------------------
    async def evaluate_alerts(self) -> None:
        cluster = await self.cluster()
        checks = await self.health.dependency_checks()
        window = cluster.merged.window(60)
        enough = window.requests >= self.settings.alert_min_requests
        stats = self.sampler.stats
        values: dict[str, float | None] = {
            "memory_rss": stats.rss_bytes / _MIB,
            "event_loop_lag": self._lag_peak * 1000,
            "error_rate_5xx": window.error_rate_5xx if enough else None,
            "latency_p95": window.p95_ms if enough else None,
        }
        self._lag_peak = 0.0
        for key, name in (("database:responseTime", "dependency_database"),
                          ("redis:responseTime", "dependency_redis")):
            check = checks.get(key)
            if check is not None:
                values[name] = 1.0 if check.output is not None else 0.0
        self.alerts.update(values, time.time(), leader=cluster.leader)

    async def _sample_forever(self) -> None:
        interval = self.settings.monitor_sample_seconds
        while True:
            started = time.monotonic()
            await asyncio.sleep(interval)
            lag = max(time.monotonic() - started - interval, 0.0)
            self._lag_peak = max(self._lag_peak, lag)
            try:
                self.sampler.sample(lag)
            except Exception:
                logger.exception("process sampling failed; retrying")

    async def _alert_forever(self) -> None:
        interval = self.settings.alert_eval_seconds
        # Soon after start-up, so /api/monitor shows values early; then at the set interval.
        await asyncio.sleep(min(interval, 1.0))
        while True:
            try:
                await self.evaluate_alerts()
            except Exception:
                logger.exception("alert evaluation failed; retrying")
            await asyncio.sleep(interval)

    async def log_performance(self) -> bool:
        """Log the service's figures over the last minute (leader only); True if logged."""
        cluster = await self.cluster()
        if not cluster.leader:
            return False
        window = cluster.merged.window(60)
        processes = [s.get("process", {}) for s in cluster.snapshots]
        rss = sum(int(p.get("rss_bytes", 0)) for p in processes)
        cpu = sum(float(p.get("cpu_percent", 0.0)) for p in processes)
        lag = max((float(p.get("loop_lag_max_ms", 0.0)) for p in processes), default=0.0)
        rejections = sum(int(s.get("rate_limit", {}).get("rejections", 0)) for s in cluster.snapshots)
        p95 = "-" if window.p95_ms is None else f"{window.p95_ms:.1f}"
        performance_logger.info(
            "performance over the last minute: %.2f req/s, p95 %s ms, 5xx %.2f %%, 4xx %.2f %%, "
            "%d in flight, rss %.0f MiB, cpu %.0f %%, loop lag max %.1f ms, %d processes",
            window.rate_per_second, p95, window.error_rate_5xx * 100, window.error_rate_4xx * 100,
            cluster.merged.in_flight, rss / _MIB, cpu, lag, len(cluster.snapshots),
            extra={
                "metrics.window_seconds": 60,
                "http.server.requests": window.requests,
                "http.server.request_rate": window.rate_per_second,
                "http.server.duration_p50_ms": window.p50_ms,
                "http.server.duration_p95_ms": window.p95_ms,
                "http.server.duration_p99_ms": window.p99_ms,
                "http.server.duration_max_ms": window.max_ms,
                "http.server.error_rate_4xx": window.error_rate_4xx,
                "http.server.error_rate_5xx": window.error_rate_5xx,
                "http.server.active_requests": cluster.merged.in_flight,
                "process.memory.rss_bytes": rss,
                "process.cpu.percent": round(cpu, 1),
                "event_loop.lag_max_ms": lag,
                "rate_limit.rejections": rejections,
                "service.processes": len(cluster.snapshots),
            },
        )
        return True

    async def _log_forever(self) -> None:
        interval = self.settings.metrics_log_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.log_performance()
            except Exception:
                logger.exception("performance log failed; retrying")

    async def publish(self) -> None:
        async with self._publish_lock:
            await self.share.publish(self.instance_id, orjson.dumps(self.snapshot()))

    async def _publish_forever(self) -> None:
        if isinstance(self.share, NoShare):
            return
        interval = self.settings.metrics_publish_seconds
        while True:
            try:
                await self.publish()
                if self._publish_failing:
                    self._publish_failing = False
                    logger.info("metrics sharing (%s) works again", self.share.mode)
            except Exception:
                if not self._publish_failing:
                    self._publish_failing = True
                    logger.warning(
                        "cannot publish this worker's metrics (%s); other workers will not "
                        "count it until this recovers", self.share.mode,
                    )
            await asyncio.sleep(interval)
