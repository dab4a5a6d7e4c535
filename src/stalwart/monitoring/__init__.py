"""Health, metrics, alerts and the figures behind /health, /api/monitor and /metrics."""

from stalwart.monitoring.recorder import OTHER_ROUTE, UNMATCHED_ROUTE, RequestMetrics
from stalwart.monitoring.service import Cluster, Monitoring

__all__ = ["OTHER_ROUTE", "UNMATCHED_ROUTE", "Cluster", "Monitoring", "RequestMetrics"]
