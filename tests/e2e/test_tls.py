"""`stalwart serve --ssl-certfile/--ssl-keyfile` terminates TLS itself (production settings)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import PostgresDatabase
from tests.e2e.serving import ServerProcess, production_env, tls_files

pytestmark = pytest.mark.e2e


def test_production_server_terminates_tls_and_sends_hsts(tmp_path: Path, postgres_db: PostgresDatabase) -> None:
    context, certfile, keyfile = tls_files(tmp_path)
    server = ServerProcess(
        tmp_path / "var",
        env=production_env(postgres_db.url),
        args=("--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)),
        scheme="https",
    )
    with server, httpx.Client(base_url=server.url, verify=context, timeout=10) as c:
        r = c.get("/api/v1/notes")
        assert r.status_code == 401  # served over TLS, no redirect: the scheme is https
        assert r.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        assert r.headers["content-type"] == "application/problem+json"
        live = c.get("/health/live")
        assert live.status_code == 200
        # Plain HTTP on the TLS port is not served.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/health/live", timeout=5)
