"""The README's path, end to end: migrate, serve, register, log in, use notes, on a real process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.serving import ServerProcess

pytestmark = pytest.mark.e2e


def test_migrate_then_serve_then_use_the_api(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "var")
    migrated = server.run_cli("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "database at revision 0003" in migrated.stdout or "database at revision" in migrated.stdout
    with server, httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.post(
            "/api/v1/accounts",
            json={"email": "new@example.com", "password": "a long password", "display_name": "New"},
        )
        assert r.status_code == 201, r.text
        r = c.post("/api/v1/auth/tokens", json={"email": "new@example.com", "password": "a long password"})
        assert r.status_code == 201
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        r = c.post("/api/v1/notes", json={"title": "hello", "tags": ["first"]}, headers=auth)
        assert r.status_code == 201
        r = c.get("/api/v1/notes", headers=auth)
        assert r.status_code == 200
        assert [n["title"] for n in r.json()["data"]] == ["hello"]
        r = c.get("/nope")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert "server" not in r.headers  # --no-server-header
        r = c.get("/openapi.json")
        assert r.status_code == 200
    assert (tmp_path / "var" / "stalwart.db").exists()


def test_serve_refuses_unsafe_production_configuration(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "var", env={"STALWART_ENV": "production", "STALWART_DEBUG": "true"}
    )
    result = server.run_cli("serve", "--port", "1")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("unsafe:")]
    assert any("STALWART_SECRET_KEY" in line for line in lines)
    assert any("STALWART_DEBUG is on" in line for line in lines)
    assert any("STALWART_CORS_ORIGINS is empty" in line for line in lines)
    assert "Traceback" not in result.stderr
    check = server.run_cli("check-config")
    assert check.returncode == 1
    assert [line for line in check.stderr.splitlines() if line.startswith("unsafe:")] == lines
