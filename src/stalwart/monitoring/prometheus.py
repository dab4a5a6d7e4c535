"""Prometheus text exposition of the merged figures, built at scrape time.

The hot path never touches prometheus-client (its labelled `Counter.inc()` plus
`Histogram.observe()` cost about 3 µs per request, against well under 1 µs for the plain
structures of `RequestMetrics`); a custom Collector turns a `Cluster` into metric families
when `/metrics` is scraped. Labels: route template, method, status class, instance id: all
bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from stalwart import __version__
from stalwart.monitoring.histogram import PROMETHEUS_BOUNDS
from stalwart.monitoring.service import Cluster

__all__ = ["ClusterCollector", "render_metrics"]


class ClusterCollector(Collector):
    def __init__(self, cluster: Cluster, *, service: str, environment: str) -> None:
        self.cluster = cluster
        self.service = service
        self.environment = environment

    def collect(self) -> Iterator[Metric]:
        cluster = self.cluster
        merged = cluster.merged
        info = InfoMetricFamily("stalwart_build", "Service version and environment")
        info.add_metric([], {"version": __version__, "service": self.service,
                             "environment": self.environment})
        yield info

        requests = CounterMetricFamily(
            "stalwart_http_requests", "HTTP requests finished, by route template, method and "
            "status class", labels=["route", "method", "status_class"],
        )
        for (route, method, status_class), n in sorted(merged.counts.items()):
            requests.add_metric([route, method, f"{status_class}xx"], n)
        yield requests

        duration = HistogramMetricFamily(
            "stalwart_http_request_duration_seconds", "Time to the end of the response, by "
            "route template", labels=["route"],
        )
        for route, series in sorted(merged.routes.items()):
            buckets: list[tuple[str, float]] = []
            cumulative = 0
            start = 0
            for index, bound in PROMETHEUS_BOUNDS:
                cumulative += sum(series.hist[start : index + 1])
                start = index + 1
                buckets.append((repr(bound), float(cumulative)))
            buckets.append(("+Inf", float(sum(series.hist))))
            duration.add_metric([route], buckets, series.sum)
        yield duration

        yield GaugeMetricFamily(
            "stalwart_http_requests_in_flight", "HTTP requests being served now",
            value=merged.in_flight,
        )
        yield GaugeMetricFamily(
            "stalwart_instances", "Live processes whose figures are included",
            value=len(cluster.snapshots),
        )

        rejections = 0
        for snap in cluster.snapshots:
            rejections += int(snap.get("rate_limit", {}).get("rejections", 0))
        yield CounterMetricFamily(
            "stalwart_rate_limit_rejections", "Requests refused with 429 by the rate limiter",
            value=rejections,
        )

        gauges = {
            "rss_bytes": GaugeMetricFamily(
                "stalwart_process_resident_memory_bytes", "Resident memory", labels=["instance"]),
            "cpu_percent": GaugeMetricFamily(
                "stalwart_process_cpu_percent", "CPU use (100 = one core)", labels=["instance"]),
            "open_fds": GaugeMetricFamily(
                "stalwart_process_open_fds", "Open file descriptors", labels=["instance"]),
            "threads": GaugeMetricFamily(
                "stalwart_process_threads", "Threads", labels=["instance"]),
            "loop_lag_max_ms": GaugeMetricFamily(
                "stalwart_event_loop_lag_max_seconds", "Largest event-loop delay over the last "
                "minute", labels=["instance"]),
        }
        uptime = GaugeMetricFamily(
            "stalwart_process_uptime_seconds", "Seconds since the process started",
            labels=["instance"],
        )
        pool = GaugeMetricFamily(
            "stalwart_db_pool_connections", "Database pool connections by state",
            labels=["instance", "state"],
        )
        for snap in cluster.snapshots:
            instance = str(snap.get("instance", ""))
            process = snap.get("process", {})
            for key, family in gauges.items():
                value = process.get(key)
                if value is not None:
                    scale = 0.001 if key == "loop_lag_max_ms" else 1.0
                    family.add_metric([instance], float(value) * scale)
            uptime.add_metric([instance], cluster.now - float(snap.get("started_at", cluster.now)))
            for state in ("in_use", "idle", "overflow"):
                pool.add_metric([instance, state], float(snap.get("pool", {}).get(state, 0)))
        yield from gauges.values()
        yield uptime
        yield pool


def render_metrics(cluster: Cluster, *, service: str, environment: str) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(cluster, service=service, environment=environment))
    return generate_latest(registry)
