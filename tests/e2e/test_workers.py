"""`stalwart serve --workers 2` without Redis: no budget is exceeded and no read is stale.

The workers share no counters and no cache: each admits half of each budget and the note cache
is off (settings.budget_divisor, resources._note_cache), and the operator is told so.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.serving import ServerProcess

pytestmark = pytest.mark.e2e


def test_two_workers_without_redis_split_budgets_and_never_serve_a_stale_note(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "var",
        env={"STALWART_RATE_LIMIT": "1000/15minutes", "STALWART_CACHE_TTL_SECONDS": "60"},
        args=("--workers", "2"),
    )
    assert server.run_cli("migrate").returncode == 0
    server.start(timeout=60)
    try:
        body = {"email": "w@example.com", "password": "workers password 1", "display_name": "W"}
        assert httpx.post(f"{server.url}/api/v1/accounts", json=body, timeout=10).status_code == 201
        token = httpx.post(
            f"{server.url}/api/v1/auth/tokens", json={"email": body["email"], "password": body["password"]}, timeout=10
        ).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        note = httpx.post(f"{server.url}/api/v1/notes", json={"title": "v1"}, headers=auth, timeout=10).json()
        url = f"{server.url}/api/v1/notes/{note['id']}"

        def titles() -> set[str]:
            # A new connection each time, so the kernel spreads them over both workers.
            return {httpx.get(url, headers=auth, timeout=10).json()["title"] for _ in range(8)}

        assert titles() == {"v1"}
        patched = httpx.patch(url, json={"title": "v2"}, headers={**auth, "If-Match": "*"}, timeout=10)
        assert patched.status_code == 200
        assert titles() == {"v2"}
        assert httpx.delete(url, headers=auth, timeout=10).status_code == 204
        assert {httpx.get(url, headers=auth, timeout=10).status_code for _ in range(8)} == {404}
        policy = httpx.get(f"{server.url}/api/v1/notes", headers=auth, timeout=10).headers["ratelimit-policy"]
        assert policy == '"500-in-15min";q=500;w=900'
    finally:
        server.stop()
    warning = "2 workers share no rate-limit counters: each admits 1/2 of every budget, and the note cache is off"
    assert warning in server.log()
