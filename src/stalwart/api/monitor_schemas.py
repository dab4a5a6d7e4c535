"""Response models of `GET /api/monitor` (they document it in the OpenAPI spec)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AlertOut",
    "DatabaseOut",
    "InstanceOut",
    "MonitorOut",
    "PoolOut",
    "ProcessOut",
    "RateLimitOut",
    "RedisOut",
    "RequestsOut",
    "RouteOut",
    "ServiceOut",
    "SharingOut",
    "SystemOut",
    "TimelinePointOut",
    "TrendPointOut",
    "WindowOut",
    "WindowsOut",
]


class TrendPointOut(BaseModel):
    t: float = Field(description="Epoch seconds")
    value: float


class WindowOut(BaseModel):
    requests: int
    rate_per_second: float
    errors_4xx: int
    errors_5xx: int
    error_rate_4xx: float = Field(description="Share of 4xx responses (0..1)")
    error_rate_5xx: float = Field(description="Share of 5xx responses (0..1)")
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class WindowsOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    m1: WindowOut = Field(alias="1m", description="Last minute")
    m5: WindowOut = Field(alias="5m", description="Last 5 minutes")
    m15: WindowOut = Field(alias="15m", description="Last 15 minutes")


class ServiceOut(BaseModel):
    id: str
    version: str
    release_id: str
    environment: str
    time: str
    started_at: str = Field(description="Start of the longest-running live process")
    uptime_seconds: float


class SharingOut(BaseModel):
    mode: Literal["redis", "folder", "off"]
    instances: int = Field(description="Live processes whose figures are included")


class InstanceOut(BaseModel):
    id: str
    pid: int
    started_at: str
    uptime_seconds: float
    last_seen_seconds: float = Field(description="Age of the figures (0 for the answering one)")
    in_flight: int
    rss_bytes: int
    cpu_percent: float
    open_fds: int | None
    threads: int
    loop_lag_ms: float
    loop_lag_max_ms: float


class ProcessOut(BaseModel):
    """All live processes together."""

    rss_bytes: int
    rss_trend: list[TrendPointOut] = Field(description="Summed RSS every 10 s, last 15 minutes")
    cpu_percent: float = Field(description="100 = one core")
    open_fds: int
    threads: int
    loop_lag_ms: float = Field(description="Largest current event-loop delay")
    loop_lag_max_ms: float = Field(description="Largest event-loop delay over the last minute")


class SystemOut(BaseModel):
    cpu_count: int
    cpu_percent: float
    load_1: float
    load_5: float
    load_15: float
    memory_total_bytes: int
    memory_available_bytes: int
    memory_used_percent: float


class RequestsOut(BaseModel):
    in_flight: int
    total: int
    by_status_class: dict[str, int]
    by_method: dict[str, int]
    windows: WindowsOut


class RouteOut(BaseModel):
    route: str = Field(description="Route template (never a raw path); <unmatched> for 404s")
    total: int
    by_method: dict[str, int]
    by_status_class: dict[str, int]
    windows: WindowsOut


class TimelinePointOut(BaseModel):
    t: float = Field(description="Start of the 5-second slot, epoch seconds")
    requests: int
    rate_per_second: float
    p95_ms: float | None
    error_rate_4xx: float
    error_rate_5xx: float


class RateLimitOut(BaseModel):
    hits: int
    rejections: int
    errors: int = Field(description="Decisions taken without the store (unreachable or slow)")


class PoolOut(BaseModel):
    size: int
    in_use: int
    idle: int
    overflow: int


class DatabaseOut(BaseModel):
    backend: str
    status: Literal["pass", "warn", "fail"]
    response_time_ms: float | None
    pool: PoolOut = Field(description="All live processes together")


class RedisOut(BaseModel):
    configured: bool
    status: Literal["pass", "warn", "fail"] | None
    latency_ms: float | None


class AlertOut(BaseModel):
    name: str
    state: Literal["ok", "firing"]
    value: float | None
    threshold: float
    unit: str
    scope: Literal["instance", "service"]
    since: str = Field(description="Last change of state (ISO 8601 UTC)")
    description: str
    instances: list[str] = Field(description="Processes where an instance alert fires")


class MonitorOut(BaseModel):
    service: ServiceOut
    sharing: SharingOut
    process: ProcessOut
    instances: list[InstanceOut]
    system: SystemOut
    requests: RequestsOut
    routes: list[RouteOut]
    timeline: list[TimelinePointOut] = Field(description="5-second slots, last 15 minutes")
    rate_limit: RateLimitOut
    database: DatabaseOut
    redis: RedisOut
    alerts: list[AlertOut]
