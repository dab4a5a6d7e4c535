"""stalwart/protocol.py: a request that is not valid HTTP gets the policy's 400 problem."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx
import orjson
import pytest

from stalwart.policies.headers import HELMET_HEADERS
from tests.conftest import PostgresDatabase
from tests.e2e.serving import ServerProcess, production_env, tls_files

pytestmark = pytest.mark.e2e


SECURITY_FIELDS = {
    b"content-security-policy",
    b"x-frame-options",
    b"strict-transport-security",
    b"permissions-policy",
    *(name.lower().encode() for name, _ in HELMET_HEADERS),
}


def _security(fields: dict[bytes, bytes] | httpx.Headers) -> dict[bytes, bytes]:
    items = fields.raw if isinstance(fields, httpx.Headers) else fields.items()
    return {name.lower(): value for name, value in items if name.lower() in SECURITY_FIELDS}


def _exchange(
    port: int, raw: bytes, context: ssl.SSLContext | None = None
) -> tuple[bytes, dict[bytes, bytes], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        if context is None:
            return _read_answer(plain, raw)
        with context.wrap_socket(plain, server_hostname="127.0.0.1") as tls:
            return _read_answer(tls, raw)


def _read_answer(sock: socket.socket, raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    sock.sendall(raw)
    data = b""
    while chunk := sock.recv(65536):  # the server closes the connection after answering
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, {n.lower(): v for n, _, v in (line.partition(b": ") for line in lines)}, body


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ],
)
def test_a_malformed_request_gets_a_problem_with_a_request_id(tmp_path: Path, raw: bytes) -> None:
    server = ServerProcess(tmp_path / "var")
    assert server.run_cli("migrate").returncode == 0
    with server:
        status, fields, body = _exchange(server.port, raw)
        ok = _exchange(server.port, b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        not_found = httpx.get(f"{server.url}/nowhere", timeout=10)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert fields[b"content-type"] == b"application/problem+json"
    assert fields[b"connection"] == b"close"
    assert fields[b"x-content-type-options"] == b"nosniff"
    assert fields[b"content-security-policy"] == b"default-src 'none'; frame-ancestors 'none'"
    assert int(fields[b"content-length"]) == len(body)
    # The same security fields as the app's own error document; outside production that
    # includes HSTS over plain HTTP, as the headers policy sends it (helmet parity).
    assert not_found.status_code == 404
    assert _security(fields) == _security(not_found.headers)
    assert fields[b"strict-transport-security"] == b"max-age=31536000; includeSubDomains"
    assert len(_security(fields)) == 13
    problem = orjson.loads(body)
    assert problem["status"] == 400
    assert problem["type"] == "/problems/bad-request"
    assert problem["request_id"] == fields[b"x-request-id"].decode()
    assert len(problem["request_id"]) == 32
    assert b"uvicorn" not in body
    assert b"Invalid HTTP request" not in body
    assert ok[0] == b"HTTP/1.1 200 OK"  # the server goes on serving
    logged = [orjson.loads(line) for line in server.log().splitlines() if "malformed request" in line]
    assert [entry["request.id"] for entry in logged] == [problem["request_id"]]


def test_in_production_the_400_carries_hsts_over_tls_only_and_the_configured_fields(
    tmp_path: Path, postgres_db: PostgresDatabase
) -> None:
    context, certfile, keyfile = tls_files(tmp_path)
    env = production_env(
        postgres_db.url,
        STALWART_HSTS_MAX_AGE="63072000",
        STALWART_HSTS_PRELOAD="true",
        STALWART_SECURITY_HEADERS="Cross-Origin-Resource-Policy: cross-origin,X-XSS-Protection:",
    )
    tls = ServerProcess(
        tmp_path / "tls",
        env=env,
        args=("--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)),
        scheme="https",
    )
    assert tls.run_cli("migrate").returncode == 0
    with tls:
        status, fields, _ = _exchange(tls.port, b"GARBAGE\r\n\r\n", context)
        not_found = httpx.get(f"{tls.url}/nowhere", verify=context, timeout=10)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert not_found.status_code == 404
    assert _security(fields) == _security(not_found.headers)
    assert fields[b"strict-transport-security"] == b"max-age=63072000; includeSubDomains; preload"
    assert fields[b"cross-origin-resource-policy"] == b"cross-origin"
    assert b"x-xss-protection" not in fields

    plain = ServerProcess(tmp_path / "plain", env=env)
    with plain:
        status, fields, _ = _exchange(plain.port, b"GARBAGE\r\n\r\n")
    assert status == b"HTTP/1.1 400 Bad Request"
    assert b"strict-transport-security" not in fields  # production: HSTS over HTTPS only
    assert fields[b"cross-origin-resource-policy"] == b"cross-origin"
    assert fields[b"content-security-policy"] == b"default-src 'none'; frame-ancestors 'none'"
