"""`stalwart audit URL`: check a live API against the production policy from the outside.

Each check sends real requests and compares what comes back with what the policy asks for.
It needs no access to the server's code or configuration, so it audits any API, not only
Stalwart. Requests are few and bounded (no load is generated).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

__all__ = ["HELMET_EXPECTED", "Check", "Finding", "run_audit"]

# The headers helmet 8 sets by default, with the values it sets (CSP and HSTS apart).
HELMET_EXPECTED: dict[str, str] = {
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "origin-agent-cluster": "?1",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-dns-prefetch-control": "off",
    "x-download-options": "noopen",
    "x-permitted-cross-domain-policies": "none",
    "x-xss-protection": "0",
}
_FRAME_OPTIONS = {"DENY", "SAMEORIGIN"}
_EVIL_ORIGIN = "https://audit-disallowed.invalid"


@dataclass
class Finding:
    check: str
    policy: str
    ok: bool
    detail: str


@dataclass
class Check:
    name: str
    policy: str
    run: Callable[[httpx.Client], tuple[bool, str]]


@dataclass
class _Context:
    probe_path: str = field(default_factory=lambda: f"/audit-{uuid.uuid4().hex[:12]}")


def _security_headers(client: httpx.Client) -> tuple[bool, str]:
    ctx = _Context()
    r = client.get(ctx.probe_path)  # an error response must carry them too
    missing = [
        f"{name}: {value}" for name, value in HELMET_EXPECTED.items()
        if r.headers.get(name) != value
    ]
    if "content-security-policy" not in r.headers:
        missing.append("content-security-policy")
    if r.headers.get("x-frame-options", "").upper() not in _FRAME_OPTIONS:
        missing.append("x-frame-options: DENY|SAMEORIGIN")
    if missing:
        return False, "missing or wrong on a 404: " + "; ".join(missing)
    return True, f"helmet set present on a {r.status_code} response"


def _no_banner(client: httpx.Client) -> tuple[bool, str]:
    r = client.get("/")
    leaks = [h for h in ("x-powered-by", "server") if h in r.headers]
    if leaks:
        return False, "reveals " + ", ".join(f"{h}: {r.headers[h]}" for h in leaks)
    return True, "no Server or X-Powered-By header"


def _hsts(client: httpx.Client) -> tuple[bool, str]:
    if client.base_url.scheme != "https":
        return True, "not applicable over http (HSTS is sent over HTTPS)"
    value = client.get("/").headers.get("strict-transport-security", "")
    age = next((p.split("=", 1)[1] for p in value.split(";") if p.strip().startswith("max-age=")), "0")
    if int(age.strip() or 0) < 15_552_000:
        return False, f"Strict-Transport-Security is {value!r} (want max-age >= 180 days)"
    return True, value


def _https_redirect(client: httpx.Client) -> tuple[bool, str]:
    if client.base_url.scheme != "https":
        return True, "not applicable: the audited URL is plain http (audit the https URL in production)"
    http_url = client.base_url.copy_with(scheme="http", port=None)
    try:
        r = httpx.get(str(http_url), follow_redirects=False, timeout=5)
    except httpx.HTTPError:
        return True, "plain http is not served at all"
    location = r.headers.get("location", "")
    if r.status_code in (301, 308) and location.startswith("https://"):
        return True, f"http redirects with {r.status_code} to {location}"
    return False, f"plain http answered {r.status_code} without a redirect to https"


def _problem_json(client: httpx.Client) -> tuple[bool, str]:
    r = client.get(_Context().probe_path)
    if r.status_code != 404:
        return False, f"unknown path answered {r.status_code}, want 404"
    if r.headers.get("content-type", "").split(";")[0] != "application/problem+json":
        return False, f"404 content-type is {r.headers.get('content-type')!r}"
    body = r.json()
    missing = {"type", "title", "status"} - set(body)
    if missing or body.get("status") != 404:
        return False, f"problem body lacks {sorted(missing)} or has the wrong status"
    return True, "404 is RFC 9457 problem+json"


def _no_leak_in_errors(client: httpx.Client) -> tuple[bool, str]:
    r = client.post(
        "/api/v1/accounts", content=b'{"email": ', headers={"content-type": "application/json"}
    )
    text = r.text.lower()
    leaks = [w for w in ("traceback", "sqlalchemy", "asyncpg", "psycopg", "file \"/", "select ")
             if w in text]
    if r.status_code >= 500 or leaks:
        return False, f"malformed JSON answered {r.status_code}; leaks: {leaks}"
    return True, f"malformed JSON answered {r.status_code} without internals"


def _request_id(client: httpx.Client) -> tuple[bool, str]:
    rid = f"audit-{uuid.uuid4().hex}"
    r = client.get("/health/live", headers={"X-Request-ID": rid})
    if r.headers.get("x-request-id") != rid:
        return False, "X-Request-ID is not echoed"
    return True, "X-Request-ID echoed"


def _cors(client: httpx.Client) -> tuple[bool, str]:
    r = client.options(
        "/api/v1/notes",
        headers={"Origin": _EVIL_ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    allowed = r.headers.get("access-control-allow-origin")
    if allowed in ("*", _EVIL_ORIGIN):
        return False, f"a foreign origin is allowed (Access-Control-Allow-Origin: {allowed})"
    if "origin" not in r.headers.get("vary", "").lower():
        return False, "no Vary: Origin on a CORS response"
    return True, f"foreign origin refused ({r.status_code}, no Access-Control-Allow-Origin)"


def _rate_limit_headers(client: httpx.Client) -> tuple[bool, str]:
    r = client.get("/api/v1/notes")
    policy = r.headers.get("ratelimit-policy") or r.headers.get("x-ratelimit-limit")
    if not policy:
        return False, "no RateLimit-Policy header on an API response"
    return True, f"RateLimit-Policy: {policy}"


def _health(client: httpx.Client) -> tuple[bool, str]:
    r = client.get("/health")
    ctype = r.headers.get("content-type", "").split(";")[0]
    if r.status_code not in (200, 503) or ctype != "application/health+json":
        return False, f"/health answered {r.status_code} {ctype!r}"
    body = r.json()
    if body.get("status") not in ("pass", "warn", "fail"):
        return False, "/health has no pass/warn/fail status"
    return True, f"/health {r.status_code} status={body['status']}"


def _monitor_protected(client: httpx.Client) -> tuple[bool, str]:
    r = client.get("/api/monitor")
    if r.status_code not in (401, 403):
        return False, f"/api/monitor answered {r.status_code} without credentials"
    return True, f"/api/monitor refuses anonymous callers ({r.status_code})"


def _openapi(client: httpx.Client) -> tuple[bool, str]:
    r = client.get("/openapi.json")
    if r.status_code != 200 or "openapi" not in r.json():
        return False, f"/openapi.json answered {r.status_code}"
    return True, f"OpenAPI {r.json()['openapi']}, {len(r.json().get('paths', {}))} paths"


def _body_limit(client: httpx.Client) -> tuple[bool, str]:
    r = client.post(
        "/api/v1/accounts", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    if r.status_code != 413:
        return False, f"a 2 MiB body answered {r.status_code}, want 413"
    return True, "a 2 MiB body is refused with 413"


CHECKS: tuple[Check, ...] = (
    Check("security headers", "Helmet.js provides comprehensive security headers", _security_headers),
    Check("no server banner", "Security headers enforced (HSTS, CSP, X-Frame-Options)", _no_banner),
    Check("HSTS", "Security headers enforced (HSTS, CSP, X-Frame-Options)", _hsts),
    Check("HTTPS only", "Production environment uses HTTPS only", _https_redirect),
    Check("problem+json errors", "Comprehensive error handling", _problem_json),
    Check(
        "no internals in errors",
        "No sensitive information is logged or exposed in error messages",
        _no_leak_in_errors,
    ),
    Check("request id", "All requests logged with timestamp, IP, method, path", _request_id),
    Check("CORS", "CORS configured for production domains only", _cors),
    Check(
        "rate limit",
        "Rate limiting implemented to prevent abuse (100 requests per 15 minutes per IP)",
        _rate_limit_headers,
    ),
    Check("health", "`/health` endpoint provides comprehensive system status", _health),
    Check("monitor protected", "`/api/monitor` endpoint for detailed production metrics", _monitor_protected),
    Check("OpenAPI", "OpenAPI/Swagger documentation", _openapi),
    Check("body limit", "Input validation on all user-provided data", _body_limit),
)


def run_audit(base_url: str, timeout: float = 10.0, verify: bool = True) -> list[Finding]:
    findings: list[Finding] = []
    with httpx.Client(base_url=base_url, timeout=timeout, verify=verify, follow_redirects=False) as c:
        for check in CHECKS:
            try:
                ok, detail = check.run(c)
            except (httpx.HTTPError, ValueError) as exc:
                ok, detail = False, f"request failed: {type(exc).__name__}"
            findings.append(Finding(check.name, check.policy, ok, detail))
    return findings
