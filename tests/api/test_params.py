"""api/params.py: the NUL guard, just outside the router, for every route at once."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Account

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("url", "pointers"),
    [
        ("/api/v1/notes/a%00b", ["path:note_id"]),
        ("/api/v1/notes?limit=5&q=a%00", ["query:q"]),
        ("/api/v1/notes?q=%00&tag=x%00", ["query:q", "query:tag"]),
        ("/api/v1/me?unknown=%00", ["query:unknown"]),
        ("/api/v1/notes/%00?q=%00", ["path:note_id", "query:q"]),
    ],
)
async def test_nul_gets_a_422_naming_each_parameter(
    client: httpx.AsyncClient, alice: Account, url: str, pointers: list[str]
) -> None:
    r = await client.get(url, headers=alice.headers)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["title"] == "Validation failed"
    assert [e["pointer"] for e in problem["errors"]] == pointers
    assert {e["detail"] for e in problem["errors"]} == {"NUL characters are not allowed"}
    assert problem["request_id"] == r.headers["x-request-id"]


async def test_the_guard_answers_before_authentication_and_changes_nothing_else(
    client: httpx.AsyncClient, alice: Account
) -> None:
    refused = await client.get("/api/v1/notes?q=%00")  # no token: the guard answers first
    assert refused.status_code == 422
    plain = await client.get("/api/v1/notes?q=%2500", headers=alice.headers)  # a literal "%00"
    assert plain.status_code == 200
    assert plain.json() == {"data": [], "next": None}


@pytest.mark.parametrize("url", ["/api/v1/%E2%98%83/%00", "/nowhere/%00", "/nowhere?q=%00"])
async def test_a_path_no_route_takes_is_404_whatever_it_holds(
    client: httpx.AsyncClient, alice: Account, url: str
) -> None:
    r = await client.get(url, headers=alice.headers)
    assert (r.status_code, r.headers["content-type"]) == (404, "application/problem+json")
