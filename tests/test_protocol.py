"""stalwart/protocol.py: a request that is not valid HTTP gets the policy's 400 problem."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson
import pytest

from tests.e2e.serving import ServerProcess

pytestmark = pytest.mark.e2e


def _exchange(port: int, raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
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
    assert status == b"HTTP/1.1 400 Bad Request"
    assert fields[b"content-type"] == b"application/problem+json"
    assert fields[b"connection"] == b"close"
    assert fields[b"x-content-type-options"] == b"nosniff"
    assert fields[b"content-security-policy"] == b"default-src 'none'; frame-ancestors 'none'"
    assert int(fields[b"content-length"]) == len(body)
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
