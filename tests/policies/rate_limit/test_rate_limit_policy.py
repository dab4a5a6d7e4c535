from __future__ import annotations

import pytest

from stalwart.policies.rate_limit import Policy, parse_policy
from stalwart.policies.rate_limit.policy import format_window
from stalwart.settings import Settings


@pytest.mark.parametrize(
    ("text", "limit", "window", "name"),
    [
        ("100/15minutes", 100, 900, "100-in-15min"),
        ("10/minute", 10, 60, "10-in-1min"),
        ("5/15min", 5, 900, "5-in-15min"),
        ("1000/hour", 1000, 3600, "1000-in-1h"),
        ("50/30s", 50, 30, "50-in-30s"),
        ("7/90s", 7, 90, "7-in-90s"),
        ("3/2days", 3, 172_800, "3-in-2d"),
        (" 20 / 5 Minutes ", 20, 300, "20-in-5min"),
        ("10 per hour", 10, 3600, "10-in-1h"),
    ],
)
def test_parse_policy(text: str, limit: int, window: int, name: str) -> None:
    assert parse_policy(text) == Policy(limit=limit, window=window, name=name)


@pytest.mark.parametrize("text", ["", "100", "100/", "0/minute", "10/0minutes", "10/fortnight", "a/s"])
def test_parse_policy_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        parse_policy(text)


def test_default_setting_is_100_per_15_minutes() -> None:
    policy = parse_policy(Settings.model_fields["rate_limit"].default)
    assert (policy.limit, policy.window, policy.name) == (100, 900, "100-in-15min")


def test_format_window() -> None:
    assert [format_window(s) for s in (1, 59, 60, 61, 900, 3600, 5400, 86_400)] == [
        "1s",
        "59s",
        "1min",
        "61s",
        "15min",
        "1h",
        "90min",
        "1d",
    ]


def test_policy_name_must_not_break_the_header() -> None:
    with pytest.raises(ValueError, match="structured-field"):
        Policy(limit=1, window=1, name='a"b')
