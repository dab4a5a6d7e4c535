"""`stalwart serve --ssl-certfile/--ssl-keyfile` terminates TLS itself (production settings)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import PostgresDatabase
from tests.e2e.serving import ServerProcess

pytestmark = pytest.mark.e2e


def test_production_server_terminates_tls_and_sends_hsts(tmp_path: Path, postgres_db: PostgresDatabase) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    server = ServerProcess(
        tmp_path / "var",
        env={
            "STALWART_ENV": "production",
            "STALWART_SECRET_KEY": "k" * 48,
            "STALWART_CORS_ORIGINS": "https://app.example.com",
            "STALWART_DATABASE_URL": postgres_db.url,
            "STALWART_ARGON2_TIME_COST": "2",
            "STALWART_ARGON2_MEMORY_KIB": "19456",
        },
        args=("--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)),
        scheme="https",
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
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
