"""policies/rate_limit/factory.py: budgets as each process enforces them."""

from __future__ import annotations

from pathlib import Path

import pytest

from stalwart.policies.rate_limit import Policy, rate_limit_middleware
from stalwart.policies.rate_limit.factory import (
    configured_policy,
    login_account_policy,
    route_limits_from_settings,
    unsplittable_budgets,
)
from tests.conftest import make_settings


@pytest.mark.parametrize(
    ("settings", "limit"),
    [
        ({"workers": 1}, 100),
        ({"workers": 2}, 50),
        ({"workers": 3}, 33),
        ({"workers": 2, "redis_url": "redis://127.0.0.1:6379/0", "rate_limit_backend": "auto"}, 100),
        ({"workers": 2, "redis_url": "redis://127.0.0.1:6379/0", "rate_limit_backend": "redis"}, 100),
        ({"workers": 2, "rate_limit_backend": "auto"}, 50),
        ({"workers": 2, "redis_url": "redis://127.0.0.1:6379/0", "rate_limit_backend": "memory"}, 50),
    ],
)
def test_workers_that_share_no_counters_split_each_budget(
    tmp_path: Path, settings: dict[str, object], limit: int
) -> None:
    s = make_settings(tmp_path, rate_limit="100/15minutes", **settings)
    assert configured_policy(s, s.rate_limit) == Policy(limit=limit, window=900)
    middleware = rate_limit_middleware(s)
    assert middleware.kwargs["policy"] == Policy(limit=limit, window=900)


def test_every_budget_is_split_and_none_falls_to_zero(tmp_path: Path) -> None:
    s = make_settings(
        tmp_path, workers=4, rate_limit_login="10/15minutes", rate_limit_login_account="1/minute",
        rate_limit_monitoring="1200/15minutes",
    )
    assert [route.policy.limit for route in route_limits_from_settings(s)] == [2, 300, 300]
    assert login_account_policy(s) == Policy(limit=1, window=60)


def test_a_budget_smaller_than_the_workers_cannot_be_split(tmp_path: Path) -> None:
    s = make_settings(tmp_path, rate_limit_backend="auto", rate_limit_login_account="5/15minutes")
    assert unsplittable_budgets(s, 5) == []
    assert unsplittable_budgets(s, 6) == [
        "STALWART_RATE_LIMIT_LOGIN_ACCOUNT (5/15minutes) cannot be split between 6 workers that share no"
        " counters: set STALWART_REDIS_URL (with the auto or redis backend), or run fewer workers"
    ]
    shared = make_settings(tmp_path, rate_limit_backend="redis", redis_url="redis://127.0.0.1:6379/0",
                           rate_limit_login_account="5/15minutes")
    assert unsplittable_budgets(shared, 6) == []
