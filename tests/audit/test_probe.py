"""audit/probe.py: an audited server cannot hang the audit, fill its memory or crash it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from stalwart.audit import AuditError, Outcome, run_audit
from stalwart.audit.probe import OutOfTime, Prober
from tests.audit.fake_api import BASE, FakeApi, Flaws


def test_a_trickled_answer_is_cut_at_the_request_limit() -> None:
    api = FakeApi(Flaws(trickle=True))  # one byte every 0.2 s, for 200 s
    started = time.monotonic()
    report = {f.check: f for f in run_audit(BASE, transport=api.transport(), request_seconds=1.0)}
    elapsed = time.monotonic() - started
    # The unknown path's answer trickles: it is given up after about 1 s.
    assert elapsed < 4
    assert report["error documents"].outcome is Outcome.FAIL
    assert report["error documents"].detail.startswith("no answer in time")


@pytest.fixture
def trickled_head() -> Iterator[int]:
    """A server that sends its status line and fields one byte every 0.2 s, for minutes."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\n" + b"x-slow: " + b"a" * 1000:
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()
    thread.join(timeout=5)


def test_a_trickled_head_is_cut_at_the_request_limit(trickled_head: int) -> None:
    # Each byte comes well within httpx's read timeout: only a limit on the whole request ends it.
    prober = Prober(f"http://127.0.0.1:{trickled_head}", request_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout, match="no whole answer within 1 s"):
        prober.fetch("GET", "/")
    assert time.monotonic() - started < 3
    prober.close()


def test_the_whole_audit_has_a_deadline() -> None:
    api = FakeApi(Flaws(trickle=True))
    prober = Prober(BASE, transport=api.transport(), request_seconds=1.0, audit_seconds=1.5)
    with pytest.raises(httpx.ReadTimeout):
        prober.fetch("GET", "/slow")
    with pytest.raises((httpx.ReadTimeout, OutOfTime)):
        prober.fetch("GET", "/slow")
    with pytest.raises(OutOfTime):
        prober.fetch("GET", "/slow")
    prober.close()


def test_a_huge_body_is_read_no_further_than_the_cap() -> None:
    api = FakeApi(Flaws(huge=True))  # 300 MiB
    prober = Prober(BASE, transport=api.transport(), max_body=1 << 20)
    sample = prober.fetch("GET", "/big")
    prober.close()
    assert sample.truncated is True
    assert len(sample.body) == 1 << 20
    assert sample.json() is None
    assert api.huge is not None
    assert api.huge.sent <= (1 << 20) + 65536


@pytest.mark.parametrize(
    "flaws",
    [
        Flaws(not_found_body=("application/problem+json", b'[{"a": 1}]')),
        Flaws(health=(200, b"[]", "application/health+json")),
        Flaws(openapi=b"null"),
        Flaws(openapi=b'{"paths": []}'),
        Flaws(openapi=b'{"paths": {"/x": null, "5": {}, "/y": {"post": {"requestBody": []}}}}'),
        Flaws(not_found_body=("application/problem+json", b"\xff\xfe not json")),
    ],
)
def test_odd_answers_are_judged_not_crashed_on(flaws: Flaws) -> None:
    findings = run_audit(BASE, transport=FakeApi(flaws).transport())
    assert len(findings) == 14
    assert any(f.outcome is Outcome.FAIL for f in findings)


def test_an_unreachable_api_is_an_error_not_a_report() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(AuditError, match="cannot connect"):
        run_audit(BASE, transport=httpx.MockTransport(refuse))


@pytest.mark.parametrize("url", ["http://[::1", "127.0.0.1:8041", "ftp://example.com", "https://"])
def test_a_url_that_is_not_http_is_an_error(url: str) -> None:
    with pytest.raises(AuditError, match="not"):
        run_audit(url)
