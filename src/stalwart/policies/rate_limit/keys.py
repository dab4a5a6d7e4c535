"""Client keys: which budget a request draws from."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from ipaddress import IPv6Address, IPv6Network

__all__ = ["NO_CLIENT", "account_key", "client_key", "ipv6_key"]

# Requests without a peer address (a unix socket with no proxy in front) share one budget.
NO_CLIENT = "-"


@lru_cache(maxsize=65_536)
def ipv6_key(host: str, prefix: int) -> str:
    """The key of an address containing ":" (cached: parsing is the costly part)."""
    try:
        address = IPv6Address(host)
    except ValueError:
        return host
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    # One /56 is what a single customer usually gets; keying by /128 would let
    # them rotate through 2^72 addresses, each with a fresh budget.
    return str(IPv6Network((int(address) >> (128 - prefix) << (128 - prefix), prefix)))


def client_key(host: str | None, ipv6_prefix: int = 56) -> str:
    """The key of a client address: IPv4 as is, IPv6 as its network, mapped IPv4 folded."""
    if not host:
        return NO_CLIENT
    if ":" not in host:
        return host
    return ipv6_key(host, ipv6_prefix)


def account_key(identifier: str) -> str:
    """A key for a per-account budget that does not store the identifier (an email) in clear."""
    digest = hashlib.sha256(identifier.strip().lower().encode()).hexdigest()
    return f"account:{digest[:32]}"
