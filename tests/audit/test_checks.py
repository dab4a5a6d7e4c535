"""audit/checks.py: each check passes on an API that meets its bullet and fails on each flaw.

The fake API (fake_api.py) meets every check; each test gives it one flaw and asserts the
whole report: that check's outcome and detail, and every other check still passing.
"""

from __future__ import annotations

import orjson
import pytest

from stalwart.audit import CHECKS, Finding, Outcome, run_audit
from tests.audit.fake_api import BASE, FakeApi, Flaws


def audit(api: FakeApi, **options: object) -> dict[str, Finding]:
    findings = run_audit(BASE, transport=api.transport(), body_size=2 << 20, **options)  # type: ignore[arg-type]
    return {f.check: f for f in findings}


def outcomes(report: dict[str, Finding]) -> dict[str, Outcome]:
    return {name: f.outcome for name, f in report.items()}


ALL_PASS = {check.name: Outcome.PASS for check in CHECKS}


def test_an_api_meeting_the_policy_passes_every_check() -> None:
    api = FakeApi()
    report = audit(api)
    assert outcomes(report) == ALL_PASS
    assert report["rate limit"].detail == "100 requests per 900 s; remaining 97 then 96 on GET /api/v1/things"
    assert report["HTTPS only"].detail == "plain http is not served (port 80 refuses connections)"


def test_it_changes_nothing_sends_no_valid_json_and_never_calls_a_route_without_a_body() -> None:
    api = FakeApi()
    audit(api)
    writes = [r for r in api.requests if r.method not in ("GET", "OPTIONS")]
    assert {(r.method, r.url.path) for r in writes} == {("POST", "/api/v1/things")}
    for request in writes:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(request.content)
    assert all("/reindex" not in r.url.path for r in api.requests)
    assert all(r.method != "DELETE" for r in api.requests)
    assert len(api.requests) <= 20


@pytest.mark.parametrize(
    ("flaws", "check", "detail"),
    [
        (Flaws(headers_on_errors_only=True), "security headers",
         "200 to GET /openapi.json lacks cross-origin-opener-policy"),
        (Flaws(csp="default-src * 'unsafe-inline' 'unsafe-eval'"), "CSP",
         "scripts from 'unsafe-eval' 'unsafe-inline' *"),
        (Flaws(powered_by_on_errors=True), "no server banner", "X-Powered-By: Express 4.17.1"),
        (Flaws(server_header="uvicorn"), "no server banner", "Server: uvicorn"),
        (Flaws(hsts_elsewhere="max-age=60"), "HSTS", "200 to GET /openapi.json: 'max-age=60'"),
        (Flaws(http_served=True), "HTTPS only", "plain http answered 200 without a redirect to https"),
        (Flaws(redirect_to="https://attacker.invalid/"), "HTTPS only", "not to https on api.test"),
        (Flaws(rate_policy="1000000;w=1"), "rate limit", "allows 1000000 requests per 1 s"),
        (Flaws(counts=False), "rate limit", "remaining count at 100 then 100: not counted"),
        (Flaws(item_read_500=True), "no internals in errors", "500 to GET /api/v1/things/audit-0"),
        (Flaws(accepts_big_bodies=True), "body limit", "a 2 MiB body answered 201"),
        (Flaws(cors_reflects_get=True), "CORS", "allows a foreign origin"),
        (Flaws(monitor_body=b'{"db": "postgres://admin:hunter2@db/prod"}'), "monitor protected",
         "refused (401) but its body carries data"),
        (Flaws(health=(200, b'{"status":"fail"}', "application/health+json")), "health",
         "answered 200 with status 'fail'"),
        (Flaws(health=(200, b'[{"status":"pass"}]', "application/json")), "health", "want a JSON object"),
        (Flaws(not_found_body=("text/plain", b"Not Found")), "error documents", "404 to GET / is 'text/plain'"),
        (Flaws(not_found_body=("application/problem+json", b"[1, 2]")), "error documents",
         "404 to GET / is 'application/problem+json'"),
    ],
)
def test_each_flaw_fails_its_check_and_only_that_one(flaws: Flaws, check: str, detail: str) -> None:
    report = audit(FakeApi(flaws))
    assert report[check].outcome is Outcome.FAIL
    assert detail in report[check].detail
    failed = {name for name, outcome in outcomes(report).items() if outcome is not Outcome.PASS}
    # A 500 is also an error document that is not problem+json; a body accepted whole is also
    # malformed input accepted. Everything else still passes.
    # Without its headers a 200 has no CSP and no HSTS either; a monitor that answers with data
    # does it in no problem document.
    also = {
        "no internals in errors": {"error documents"},
        "body limit": {"malformed input"},
        "security headers": {"CSP", "HSTS"},
        "monitor protected": {"error documents", "no internals in errors"},
    }
    assert failed == {check} | also.get(check, set())


def test_a_leak_in_an_error_is_named() -> None:
    report = audit(FakeApi(Flaws(item_read_500=True)))
    assert "shows 'Traceback (most recent call last)'" in report["no internals in errors"].detail


@pytest.mark.parametrize(
    "hsts", ["Max-Age=31536000; includeSubDomains", 'max-age="31536000"', "max-age=15552000; preload"]
)
def test_hsts_is_read_as_rfc_6797_writes_it(hsts: str) -> None:
    report = audit(FakeApi(Flaws(hsts_elsewhere=hsts)))
    assert report["HSTS"].outcome is Outcome.PASS


@pytest.mark.parametrize("hsts", ["max-age=15551999", "max-age=abc", "includeSubDomains", ""])
def test_hsts_shorter_than_180_days_or_unreadable_fails(hsts: str) -> None:
    report = audit(FakeApi(Flaws(hsts_elsewhere=hsts)))
    assert report["HSTS"].outcome is Outcome.FAIL


def test_an_api_without_cors_or_with_plain_json_health_is_not_failed() -> None:
    report = audit(FakeApi(Flaws(health=(200, b'{"status":"pass"}', "application/json"))))
    assert outcomes(report) == ALL_PASS


def test_a_rate_limited_audit_reports_not_checked_and_the_limit_as_enforced() -> None:
    report = audit(FakeApi(Flaws(rate_limited=True)))
    assert report["rate limit"].outcome is Outcome.PASS
    assert report["rate limit"].detail.startswith("enforced: 429 to ")
    for name in ("malformed input", "body limit", "CORS"):
        assert report[name].outcome is Outcome.NOT_CHECKED
        assert report[name].detail.startswith("rate limited (429 to ")


def test_plain_http_redirected_to_https_is_audited_over_https() -> None:
    api = FakeApi()
    report = {f.check: f for f in run_audit("http://api.test", transport=_redirecting(api))}
    assert report["HTTPS only"].outcome is Outcome.PASS
    assert report["HTTPS only"].detail == "plain http redirects with 308 to https://api.test/; audited over https"
    # The redirect (a proxy's, without the API's headers) is not judged as the API's answer.
    assert outcomes(report) == ALL_PASS


def test_plain_http_without_redirect_fails_and_hsts_is_not_checked() -> None:
    api = FakeApi()
    report = {f.check: f for f in run_audit("http://api.test", transport=_served_over_http(api))}
    assert report["HTTPS only"].outcome is Outcome.FAIL
    assert report["HSTS"].outcome is Outcome.NOT_CHECKED


def test_no_openapi_document_leaves_the_body_checks_not_checked() -> None:
    report = audit(FakeApi(Flaws(openapi=b"null")))
    assert report["OpenAPI"].outcome is Outcome.FAIL
    assert report["malformed input"].outcome is Outcome.NOT_CHECKED
    assert report["body limit"].outcome is Outcome.NOT_CHECKED


def _redirecting(api: FakeApi) -> object:
    import httpx

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "http":
            location = {"location": f"https://api.test{request.url.path}"}
            return httpx.Response(308, headers=location, stream=httpx.ByteStream(b""))
        return api.handle(request)

    return httpx.MockTransport(handle)


def _served_over_http(api: FakeApi) -> object:
    import httpx

    def handle(request: httpx.Request) -> httpx.Response:
        return api.route(request, request.url.path)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("policy", "outcome", "detail"),
    [
        ('"d";q=5;w=60', Outcome.PASS, "5 requests per 60 s"),
        ('"d";q=10;w=60', Outcome.FAIL, "up to 150 in 15 minutes"),
        ('"d";q=5000;w=86400', Outcome.FAIL, "allows 5000 requests per 86400 s"),
        ('"d";q=100;w=0', Outcome.FAIL, "a rate-limit window of 0 s"),
        ("100", Outcome.NOT_CHECKED, "a limit of 100 with no window"),
    ],
)
def test_the_rate_limit_is_read_as_100_per_15_minutes(policy: str, outcome: Outcome, detail: str) -> None:
    report = audit(FakeApi(Flaws(rate_policy=policy)))
    assert report["rate limit"].outcome is outcome
    assert detail in report["rate limit"].detail


@pytest.mark.parametrize(
    "flaws",
    [
        Flaws(csp="default-src 'none'; frame-ancestors 'none';"),
        Flaws(csp="default-src 'none';;  ; frame-ancestors 'none'"),
    ],
)
def test_a_csp_with_empty_directives_is_read_not_crashed_on(flaws: Flaws) -> None:
    assert outcomes(audit(FakeApi(flaws))) == ALL_PASS


def test_a_non_ascii_digit_in_hsts_fails_the_check_not_the_audit() -> None:
    report = audit(FakeApi(Flaws(hsts_elsewhere="max-age=\u00b2")))
    assert report["HSTS"].outcome is Outcome.FAIL


def test_an_openapi_path_no_url_can_carry_is_skipped() -> None:
    document = b'{"openapi": "3.1.0", "paths": {"/a\\u0000b": {"get": {}}, "/ok": {"get": {}}}}'
    api = FakeApi(Flaws(openapi=document))
    report = audit(api)
    assert len(report) == len(CHECKS)
    assert "/ok" in {r.url.path for r in api.requests}


def test_a_body_built_to_slow_the_leak_search_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    api = FakeApi(Flaws(not_found_body=("application/problem+json", b"a-" * (1 << 19))))  # 1 MiB
    started = time.monotonic()
    report = audit(api)
    assert time.monotonic() - started < 5
    assert report["error documents"].outcome is Outcome.FAIL  # cut at 1 MiB: not JSON


def test_a_plain_http_port_that_drops_packets_is_not_served() -> None:
    # httpx's connect timeout (the request's limit) comes before the audit's own limit on the
    # whole request, so it reads as "not served", as a refused port does.
    api = FakeApi(Flaws(http_drops_after=1.1))
    report = {f.check: f for f in run_audit(BASE, transport=api.transport(), request_seconds=1.0)}
    assert report["HTTPS only"].outcome is Outcome.PASS
