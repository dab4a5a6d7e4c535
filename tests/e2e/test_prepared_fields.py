"""On a real `stalwart serve`, the security fields prepared at start-up reach the wire once each.

The unit tests (tests/test_prepared_fields.py, tests/policies/test_headers.py) compare the
block with uvicorn's own head; here the whole path runs: the protocol advertising the
extension, the policy layer choosing the block, the cycle writing it, over keep-alive and
pipelined requests on one connection.
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.serving import ServerProcess

pytestmark = pytest.mark.e2e

STRICT = {
    b"content-security-policy": b"default-src 'none'; frame-ancestors 'none'",
    b"x-frame-options": b"DENY",
}
DOCUMENT_CSP_START = b"default-src 'self';base-uri 'self';"
COMMON = {
    b"cross-origin-opener-policy": b"same-origin",
    b"cross-origin-resource-policy": b"same-origin",
    b"origin-agent-cluster": b"?1",
    b"referrer-policy": b"no-referrer",
    b"x-content-type-options": b"nosniff",
    b"x-dns-prefetch-control": b"off",
    b"x-download-options": b"noopen",
    b"x-permitted-cross-domain-policies": b"none",
    b"x-xss-protection": b"0",
    b"strict-transport-security": b"max-age=31536000; includeSubDomains",
}


Response = tuple[bytes, list[tuple[bytes, bytes]], bytes]


def read_response(sock: socket.socket, buffer: bytearray, method: str) -> Response:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a whole head"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    fields = [(name.lower(), value) for name, _, value in (line.partition(b": ") for line in lines)]
    length = 0 if method == "HEAD" else int(dict(fields)[b"content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a whole body"
        rest += chunk
    buffer[:] = rest[length:]
    return status, fields, rest[:length]


def test_prepared_fields_on_keep_alive_and_pipelined_requests(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "var")
    assert server.run_cli("migrate").returncode == 0
    requests = [
        ("GET", "/health/live", b"200", "json"),
        ("HEAD", "/health/live", b"200", "json"),
        ("GET", "/api/v1/notes", b"401", "json"),
        ("GET", "/docs", b"200", "html"),
        ("GET", "/nope", b"404", "json"),
        ("GET", "/health/live", b"200", "json"),
    ]
    with server, socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        buffer = bytearray()
        # One after another on one keep-alive connection, then all pipelined in one write.
        for method, path, status, kind in requests:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            check(read_response(sock, buffer, method), status, kind)
        sock.sendall(
            b"".join(f"{m} {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for m, p, _, _ in requests)
        )
        for method, _, status, kind in requests:
            check(read_response(sock, buffer, method), status, kind)
        assert buffer == b""


def check(response: Response, status: bytes, kind: str) -> None:
    status_line, fields, _ = response
    assert status_line.split(b" ")[1] == status
    counts = Counter(name for name, _ in fields)
    assert [name for name, n in counts.items() if n > 1] == []  # every field once
    values = dict(fields)
    for name, value in COMMON.items():
        assert values[name] == value
    if kind == "json":
        for name, value in STRICT.items():
            assert values[name] == value
    else:
        # Swagger UI's page: helmet's document policy (the app sets none of its own).
        assert values[b"content-security-policy"].startswith(DOCUMENT_CSP_START)
        assert values[b"x-frame-options"] == b"SAMEORIGIN"
    assert b"permissions-policy" in values
    assert len(values[b"x-request-id"]) == 32
    # Written as the prepared block, after every field uvicorn wrote from the list (the
    # list path puts them before X-Request-ID): the block was used, not the list.
    names = [name for name, _ in fields]
    assert names[-1] == b"strict-transport-security"
    assert names.index(b"content-security-policy") > names.index(b"x-request-id")
