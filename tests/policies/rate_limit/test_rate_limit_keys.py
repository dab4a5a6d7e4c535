from __future__ import annotations

import pytest

from stalwart.policies.rate_limit import account_key, client_key


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:100::1", "2001:db8:1:100::/56"),
        ("2001:db8:1:1ff:ffff:ffff:ffff:ffff", "2001:db8:1:100::/56"),
        ("2001:db8:1:200::1", "2001:db8:1:200::/56"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("::FFFF:198.51.100.1", "198.51.100.1"),
        ("::1", "::/56"),
        ("fe80::1%eth0", "fe80::/56"),
        (None, "-"),
        ("", "-"),
        ("not:an:address", "not:an:address"),
    ],
)
def test_client_key(host: str | None, key: str) -> None:
    assert client_key(host) == key


def test_ipv6_prefix_is_configurable() -> None:
    assert client_key("2001:db8:1:1ff::1", 64) == "2001:db8:1:1ff::/64"
    assert client_key("2001:db8:1:1ff::1", 48) == "2001:db8:1::/48"
    assert client_key("2001:db8::1", 128) == "2001:db8::1/128"


def test_account_key_hides_and_normalises_the_identifier() -> None:
    key = account_key(" Alice@Example.com ")
    assert key == account_key("alice@example.com")
    assert key.startswith("account:")
    assert len(key) == len("account:") + 32
    assert "alice" not in key
    assert key != account_key("bob@example.com")
