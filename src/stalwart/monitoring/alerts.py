"""Threshold alerts with state, evaluated by the background sampler, logged on transitions only.

An alert is `firing` while its value is above its threshold and `ok` otherwise (a value of
None, such as a latency with too few requests to judge, counts as ok). Only a change of state
writes a log line on the `stalwart.alerts` logger: WARNING when it starts firing, INFO when it
is ok again, so a condition that lasts an hour is two lines, not one per request.

Scope: `instance` alerts (memory, event-loop lag) describe one process and each process logs
its own. `service` alerts (5xx rate, p95 latency, dependencies down) are evaluated on the
figures of every worker and instance together; so that one condition is one log line, only
the leader (the live process with the smallest instance id) logs them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from stalwart.policies.timestamps import utc_timestamp
from stalwart.settings import Settings

__all__ = ["Alert", "AlertBoard", "alert_rules"]

logger = logging.getLogger("stalwart.alerts")

Scope = Literal["instance", "service"]


@dataclass
class Alert:
    name: str
    description: str
    threshold: float
    unit: str
    scope: Scope
    state: Literal["ok", "firing"] = "ok"
    value: float | None = None
    since: float = 0.0  # epoch seconds of the last change of state (or of the start)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "value": self.value,
            "threshold": self.threshold,
            "unit": self.unit,
            "scope": self.scope,
            "since": utc_timestamp(self.since),
            "description": self.description,
        }


def alert_rules(settings: Settings) -> list[Alert]:
    rules = [
        Alert("memory_rss", "Resident memory of a process", float(settings.alert_rss_mb), "MiB",
              "instance"),
        Alert("event_loop_lag", "Largest event-loop delay since the previous evaluation",
              settings.alert_loop_lag_ms, "ms", "instance"),
        Alert("error_rate_5xx", "Share of 5xx responses over the last minute",
              settings.alert_5xx_rate, "ratio", "service"),
        Alert("latency_p95", "95th percentile response time over the last minute",
              settings.alert_p95_ms, "ms", "service"),
        Alert("dependency_database", "The database does not answer its health check",
              0.0, "down", "service"),
    ]
    if settings.redis_url:
        rules.append(Alert("dependency_redis", "Redis does not answer its health check",
                           0.0, "down", "service"))
    return rules


class AlertBoard:
    def __init__(self, rules: Iterable[Alert], *, started_at: float) -> None:
        self.alerts: dict[str, Alert] = {}
        for rule in rules:
            rule.since = started_at
            self.alerts[rule.name] = rule

    def update(
        self, values: Mapping[str, float | None], now: float, *, leader: bool = True
    ) -> list[Alert]:
        """Apply new values; log and return the alerts whose state changed."""
        changed: list[Alert] = []
        for name, value in values.items():
            alert = self.alerts.get(name)
            if alert is None:
                continue
            alert.value = None if value is None else round(value, 4)
            state: Literal["ok", "firing"] = (
                "firing" if value is not None and value > alert.threshold else "ok"
            )
            if state == alert.state:
                continue
            lasted = now - alert.since
            alert.state = state
            alert.since = now
            changed.append(alert)
            if alert.scope == "service" and not leader:
                continue
            extra = {
                "alert.name": alert.name,
                "alert.state": state,
                "alert.value": alert.value,
                "alert.threshold": alert.threshold,
                "alert.unit": alert.unit,
            }
            if state == "firing":
                logger.warning(
                    "alert %s firing: %s %s above threshold %s",
                    alert.name, alert.value, alert.unit, alert.threshold, extra=extra,
                )
            else:
                logger.info(
                    "alert %s ok again after %.0f s: %s %s (threshold %s)",
                    alert.name, lasted, alert.value, alert.unit, alert.threshold, extra=extra,
                )
        return changed

    def listing(self) -> list[dict[str, object]]:
        return [alert.as_dict() for alert in self.alerts.values()]
