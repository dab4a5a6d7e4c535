"""Assemble the `/api/monitor` document from a `Cluster` (every live process's figures)."""

from __future__ import annotations

from typing import Any

from stalwart import __version__
from stalwart.api.monitor_schemas import (
    AlertOut,
    DatabaseOut,
    InstanceOut,
    MonitorOut,
    PoolOut,
    ProcessOut,
    RateLimitOut,
    RedisOut,
    RequestsOut,
    RouteOut,
    ServiceOut,
    SharingOut,
    SystemOut,
    TimelinePointOut,
    TrendPointOut,
    WindowOut,
    WindowsOut,
)
from stalwart.monitoring.aggregate import MergedMetrics, WindowStats
from stalwart.monitoring.health import Check
from stalwart.monitoring.process import system_stats
from stalwart.monitoring.service import Cluster, Monitoring
from stalwart.policies.timestamps import utc_timestamp
from stalwart.settings import Settings

__all__ = ["build_report"]


def _window(stats: WindowStats) -> WindowOut:
    return WindowOut(**vars(stats))


def _windows(merged: MergedMetrics, route: str | None = None) -> WindowsOut:
    w = merged.windows(route)
    return WindowsOut.model_validate({k: _window(v) for k, v in w.items()})


def _instances(cluster: Cluster) -> list[InstanceOut]:
    out: list[InstanceOut] = []
    for index, snap in enumerate(cluster.snapshots):
        process: dict[str, Any] = snap.get("process", {})
        started = float(snap.get("started_at", cluster.now))
        out.append(
            InstanceOut(
                id=str(snap.get("instance", "")),
                pid=int(snap.get("pid", 0)),
                started_at=utc_timestamp(started),
                uptime_seconds=round(cluster.now - started, 1),
                last_seen_seconds=0.0 if index == 0 else round(
                    max(cluster.now - float(snap.get("time", cluster.now)), 0.0), 1),
                in_flight=int(snap.get("metrics", {}).get("in_flight", 0)),
                rss_bytes=int(process.get("rss_bytes", 0)),
                cpu_percent=float(process.get("cpu_percent", 0.0)),
                open_fds=process.get("open_fds"),
                threads=int(process.get("threads", 0)),
                loop_lag_ms=float(process.get("loop_lag_ms", 0.0)),
                loop_lag_max_ms=float(process.get("loop_lag_max_ms", 0.0)),
            )
        )
    return out


def _rss_trend(cluster: Cluster) -> list[TrendPointOut]:
    summed: dict[float, float] = {}
    for snap in cluster.snapshots:
        for t, value in snap.get("rss_trend", ()):
            summed[float(t)] = summed.get(float(t), 0.0) + float(value)
    return [TrendPointOut(t=t, value=v) for t, v in sorted(summed.items())]


def _process(instances: list[InstanceOut], cluster: Cluster) -> ProcessOut:
    return ProcessOut(
        rss_bytes=sum(i.rss_bytes for i in instances),
        rss_trend=_rss_trend(cluster),
        cpu_percent=round(sum(i.cpu_percent for i in instances), 1),
        open_fds=sum(i.open_fds or 0 for i in instances),
        threads=sum(i.threads for i in instances),
        loop_lag_ms=max((i.loop_lag_ms for i in instances), default=0.0),
        loop_lag_max_ms=max((i.loop_lag_max_ms for i in instances), default=0.0),
    )


def _sum(cluster: Cluster, section: str, keys: tuple[str, ...]) -> dict[str, int]:
    totals = dict.fromkeys(keys, 0)
    for snap in cluster.snapshots:
        values = snap.get(section, {})
        for key in keys:
            totals[key] += int(values.get(key, 0))
    return totals


def build_report(
    monitoring: Monitoring,
    settings: Settings,
    cluster: Cluster,
    checks: dict[str, Check],
    *,
    db_backend: str,
) -> MonitorOut:
    merged = cluster.merged
    instances = _instances(cluster)
    db_check = checks.get("database:responseTime")
    redis_check = checks.get("redis:responseTime")
    routes = [
        RouteOut(
            route=route,
            total=merged.route_total(route),
            by_method=merged.by_method(route),
            by_status_class=merged.by_status_class(route),
            windows=_windows(merged, route),
        )
        for route in sorted(merged.routes)
    ]
    return MonitorOut(
        service=ServiceOut(
            id=settings.service_id,
            version=__version__,
            release_id=settings.release_id or __version__,
            environment=settings.env.value,
            time=utc_timestamp(cluster.now),
            started_at=utc_timestamp(merged.since),
            uptime_seconds=round(cluster.now - merged.since, 1),
        ),
        sharing=SharingOut(mode=monitoring.share.mode, instances=len(cluster.snapshots)),
        process=_process(instances, cluster),
        instances=instances,
        system=SystemOut(**vars(system_stats())),
        requests=RequestsOut(
            in_flight=merged.in_flight,
            total=merged.total,
            by_status_class=merged.by_status_class(),
            by_method=merged.by_method(),
            windows=_windows(merged),
        ),
        routes=routes,
        timeline=[TimelinePointOut(**vars(p)) for p in merged.timeline()],
        rate_limit=RateLimitOut(**_sum(cluster, "rate_limit", ("hits", "rejections", "errors"))),
        database=DatabaseOut(
            backend=db_backend,
            status=db_check.status if db_check else "fail",
            response_time_ms=db_check.observed_value if db_check else None,
            pool=PoolOut(**_sum(cluster, "pool", ("size", "in_use", "idle", "overflow"))),
        ),
        redis=RedisOut(
            configured=redis_check is not None,
            status=redis_check.status if redis_check else None,
            latency_ms=redis_check.observed_value if redis_check else None,
        ),
        alerts=[AlertOut(**entry) for entry in monitoring.alert_listing(cluster)],
    )
