"""The audit trail of security-relevant events. Never holds a secret; IPs only anonymized."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from stalwart.data.models import AuditEvent
from stalwart.policies.request_log import anonymize_ip

__all__ = ["record"]


def record(
    session: AsyncSession,
    event: str,
    *,
    subject: str | None = None,
    actor: str | None = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add an event to the session; it commits with the change it describes."""
    anonymized = anonymize_ip(ip) if ip else None  # the one anonymizer, shared with the access log
    session.add(AuditEvent(event=event, subject=subject, actor=actor, ip=anonymized, details=details or {}))
