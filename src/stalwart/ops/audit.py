"""The audit trail of security-relevant events. Never holds a secret; IPs only anonymized."""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from stalwart.data.models import AuditEvent

__all__ = ["anonymize_ip", "record"]


def anonymize_ip(address: str | None) -> str | None:
    """IPv4 to its /24 (last octet zeroed), IPv6 to its /48."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


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
    session.add(
        AuditEvent(event=event, subject=subject, actor=actor, ip=anonymize_ip(ip), details=details or {})
    )
