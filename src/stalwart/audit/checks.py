"""The audit's checks: each compares what the audited API answered with a policy bullet.

A check passes, fails, or is "not checked" when the API gave it nothing to judge (no HTTPS
answer, no route taking a JSON body, an answer the rate limiter refused). Checks that judge
"every response" run last, over every answer the audit received by then.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import httpx

from stalwart.audit.discovery import Routes
from stalwart.audit.probe import Prober, Sample, https_redirect

__all__ = ["CHECKS", "HELMET_EXPECTED", "Check", "Outcome", "Result", "Target"]

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
_SCANNED = 64 * 1024
_HSTS_MIN_AGE = 15_552_000  # 180 days, the floor HSTS preload lists and scanners use
_POLICY_QUOTA, _POLICY_WINDOW = 100, 900  # 100 requests per 15 minutes
# Script sources that let injected markup run script (CSP Level 3).
_UNSAFE_SCRIPT = {"'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:", "blob:"}
# What must never reach a client in an error: traces, paths, SQL, libraries, credentials.
# Every repeat is bounded, and only the first _SCANNED bytes of a body are searched: the body
# comes from the audited server, which must not be able to make the search slow.
_LEAKS = re.compile(
    rb"traceback \(most recent call last\)|file \"[^\"\n]{1,500}\", line \d+|site-packages|\.py\", line"
    rb"|\b(?:select\s.{1,200}?\sfrom|insert\s+into|update\s.{1,80}?\sset|delete\s+from)\s"
    rb"|\b(?:sqlalchemy|asyncpg|psycopg2?|sqlite3|pymysql|uvicorn|starlette|fastapi|pydantic"
    rb"|django|flask|werkzeug|gunicorn|express|node_modules)\b"
    rb"|\b[a-z][a-z0-9+.-]{0,30}://[^\s/:@\"']{1,200}:[^\s@\"']{1,200}@",
    re.IGNORECASE | re.DOTALL,
)
_APP_SERVERS = re.compile(
    r"uvicorn|gunicorn|hypercorn|daphne|granian|werkzeug|python|express|node|php|asp\.net|jetty"
    r"|tomcat|kestrel|\d",
    re.IGNORECASE,
)


class Outcome(StrEnum):
    PASS = "PASS"  # noqa: S105 (an outcome, not a password)
    FAIL = "FAIL"
    NOT_CHECKED = "not checked"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    detail: str


def _pass(detail: str) -> Result:
    return Result(Outcome.PASS, detail)


def _fail(detail: str) -> Result:
    return Result(Outcome.FAIL, detail)


def _not_checked(detail: str) -> Result:
    return Result(Outcome.NOT_CHECKED, detail)


class NotChecked(Exception):
    """Raised by a check that got nothing to judge."""


@dataclass
class Target:
    """What the checks share: the prober, the routes found, and what the start learned."""

    prober: Prober
    routes: Routes
    http_port: int = 80
    body_size: int = 2 << 20
    redirect: tuple[int, str] | None = None  # plain http's redirect to https, if seen at start
    not_served: list[str] = field(default_factory=list)  # samples not judged for headers

    @property
    def https(self) -> bool:
        return self.prober.base_url.scheme == "https"

    def judged(self) -> list[Sample]:
        """Every answer of the audited API itself (not the plain-http probe)."""
        return [s for s in self.prober.samples if s.url not in self.not_served]

    def read_route(self) -> str:
        return self.routes.reads[0] if self.routes.reads else "/"


def _usable(sample: Sample) -> Sample:
    if sample.status == 429:
        retry = sample.headers.get("retry-after")
        raise NotChecked(f"rate limited ({sample.label}, Retry-After: {retry})")
    return sample


def _labels(samples: Iterable[Sample], limit: int = 3) -> str:
    labels = [s.label for s in samples]
    more = f" and {len(labels) - limit} more" if len(labels) > limit else ""
    return ", ".join(labels[:limit]) + more


# --- transport -------------------------------------------------------------------------------
def https_only(target: Target) -> Result:
    if target.redirect is not None:
        status, location = target.redirect
        return _pass(f"plain http redirects with {status} to {location}; audited over https")
    if not target.https:
        root = target.prober.get("/")
        return _fail(f"plain http is served ({root.label}) without a redirect to https")
    base = target.prober.base_url
    http_url = base.copy_with(scheme="http", port=None if target.http_port == 80 else target.http_port)
    try:
        answer = target.prober.fetch("GET", str(http_url))
    except (httpx.ConnectError, httpx.ConnectTimeout):
        return _pass(f"plain http is not served (port {target.http_port} refuses connections)")
    finally:
        target.not_served.append(str(http_url))
    location = answer.headers.get("location", "")
    if https_redirect(answer, base.host) is not None:
        return _pass(f"plain http redirects with {answer.status} to {location}")
    if answer.status in (301, 302, 307, 308):
        return _fail(f"plain http redirects with {answer.status} to {location!r}, not to https on {base.host}")
    return _fail(f"plain http answered {answer.status} without a redirect to https")


def _hsts_max_age(value: str) -> int | None:
    for directive in value.split(";"):
        name, _, argument = directive.partition("=")
        if name.strip().lower() == "max-age":
            argument = argument.strip().strip('"')
            return int(argument) if _DIGITS.fullmatch(argument) else None
    return None


def hsts(target: Target) -> Result:
    answers = [s for s in target.judged() if s.url.startswith("https://")]
    if not answers:
        return _not_checked("no HTTPS answer to check (the API was audited over plain http)")
    wrong = []
    for sample in answers:
        value = sample.headers.get("strict-transport-security", "")
        age = _hsts_max_age(value)
        if age is None or age < _HSTS_MIN_AGE:
            wrong.append(f"{sample.label}: {value or 'none'!r}")
    if wrong:
        return _fail(f"want max-age >= {_HSTS_MIN_AGE} (180 days) on every answer; " + "; ".join(wrong[:3]))
    return _pass(f"on all {len(answers)} answers: {answers[0].headers['strict-transport-security']}")


# --- response headers ------------------------------------------------------------------------
def security_headers(target: Target) -> Result:
    wrong = []
    answers = target.judged()
    for sample in answers:
        missing = [f"{name}: {value}" for name, value in HELMET_EXPECTED.items() if sample.headers.get(name) != value]
        if "content-security-policy" not in sample.headers:
            missing.append("content-security-policy")
        if sample.headers.get("x-frame-options", "").upper() not in _FRAME_OPTIONS:
            missing.append("x-frame-options: DENY|SAMEORIGIN")
        if missing:
            wrong.append(f"{sample.label} lacks {'; '.join(missing)}")
    if wrong:
        return _fail(f"{len(wrong)} of {len(answers)} answers: " + " | ".join(wrong[:2]))
    return _pass(f"helmet's set on all {len(answers)} answers ({_labels(answers)})")


def _directives(policy: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:  # "a; b;" ends with an empty part
            directives.setdefault(words[0].lower(), [w.lower() for w in words[1:]])
    return directives


def content_security_policy(target: Target) -> Result:
    answers = target.judged()
    wrong = []
    for sample in answers:
        policy = sample.headers.get("content-security-policy")
        if policy is None:
            wrong.append(f"{sample.label}: no content-security-policy")
            continue
        directives = _directives(policy)
        scripts = directives.get("script-src", directives.get("default-src"))
        if scripts is None:
            wrong.append(f"{sample.label}: neither script-src nor default-src")
            continue
        nonce_or_hash = any(s.startswith(("'nonce-", "'sha256-", "'sha384-", "'sha512-")) for s in scripts)
        unsafe = sorted(s for s in _UNSAFE_SCRIPT.intersection(scripts)
                        if not (s == "'unsafe-inline'" and nonce_or_hash))
        if unsafe:
            wrong.append(f"{sample.label}: scripts from {' '.join(unsafe)}")
    if wrong:
        return _fail("; ".join(wrong[:3]))
    return _pass(f"no script source open to injection on all {len(answers)} answers")


def no_banner(target: Target) -> Result:
    leaks = []
    for sample in target.judged():
        if "x-powered-by" in sample.headers:
            leaks.append(f"{sample.label}: X-Powered-By: {sample.headers['x-powered-by']}")
        server = sample.headers.get("server")
        if server is not None and _APP_SERVERS.search(server):
            leaks.append(f"{sample.label}: Server: {server}")
    if leaks:
        return _fail("reveals " + "; ".join(leaks[:3]))
    return _pass("no X-Powered-By, and no Server header naming an app server or a version")


# --- errors and input ------------------------------------------------------------------------
def error_documents(target: Target) -> Result:
    probe = _usable(target.prober.get(f"/audit-{uuid.uuid4().hex[:12]}"))
    if probe.status != 404:
        return _fail(f"an unknown path answered {probe.status}, want 404")
    errors = [s for s in target.judged() if s.status >= 400 and s.status != 429]
    wrong = []
    for sample in errors:
        body = sample.json_object()
        if sample.media_type != "application/problem+json" or body is None:
            wrong.append(f"{sample.label} is {sample.media_type or 'untyped'!r}")
        elif not isinstance(body.get("title"), str) or body.get("status") not in (None, sample.status):
            wrong.append(f"{sample.label} has no title or a wrong status member")
    if wrong:
        return _fail("want RFC 9457 application/problem+json: " + "; ".join(wrong[:3]))
    return _pass(f"all {len(errors)} error answers are RFC 9457 problem+json ({_labels(errors)})")


def malformed_input(target: Target) -> Result:
    if not target.routes.json_bodies:
        return _not_checked("no route taking a required JSON body in /openapi.json")
    answers = []
    for method, path in target.routes.json_bodies:
        answers.append(_usable(target.prober.fetch(
            method, path, content=b'{"audit": ', headers={"content-type": "application/json"})))
    wrong = [s.label for s in answers if s.status not in (400, 401, 403, 415, 422)]
    if wrong:
        return _fail(f"malformed JSON was not refused with a 4xx: {', '.join(wrong)}")
    return _pass(f"malformed JSON refused: {_labels(answers)}")


def body_limit(target: Target) -> Result:
    if not target.routes.json_bodies:
        return _not_checked("no route taking a required JSON body in /openapi.json")
    method, path = target.routes.json_bodies[0]
    # Never valid JSON (no closing bracket), so no server can act on it, whatever it accepts.
    body = b"[" + b" " * target.body_size
    size = f"{target.body_size / (1 << 20):g} MiB"
    try:
        answer = _usable(target.prober.fetch(method, path, content=body,
                                             headers={"content-type": "application/json"}))
    except (httpx.WriteError, httpx.RemoteProtocolError):
        return _not_checked(f"the connection closed during a {size} upload, with no answer read")
    if answer.status == 413:
        return _pass(f"a {size} body is refused with 413 ({answer.label})")
    if answer.status in (401, 403):
        return _not_checked(f"{answer.label} came before the body was judged")
    return _fail(f"a {size} body answered {answer.status} ({answer.label}), want 413")


def no_internals(target: Target) -> Result:
    answers = target.judged()
    wrong = []
    for sample in answers:
        if sample.status >= 500 and sample.status != 503:
            wrong.append(f"{sample.label} (a server error)")
        if sample.status >= 400 and (match := _LEAKS.search(sample.body[:_SCANNED])) is not None:
            wrong.append(f"{sample.label} shows {match.group(0)[:40].decode('latin-1')!r}")
    if wrong:
        return _fail("; ".join(wrong[:3]))
    errors = sum(s.status >= 400 for s in answers)
    return _pass(f"no trace, path, SQL, library or credential in {errors} error answers")


# --- cross-origin and rate limits ------------------------------------------------------------
def cors(target: Target) -> Result:
    path = target.read_route()
    preflight = _usable(target.prober.fetch(
        "OPTIONS", path, headers={"origin": _EVIL_ORIGIN, "access-control-request-method": "GET"}))
    simple = _usable(target.prober.fetch("GET", path, headers={"origin": _EVIL_ORIGIN}))
    for sample in (preflight, simple):
        allowed = sample.headers.get("access-control-allow-origin")
        if allowed in ("*", "null", _EVIL_ORIGIN):
            return _fail(f"{sample.label} allows a foreign origin (Access-Control-Allow-Origin: {allowed})")
    return _pass(f"a foreign origin is not allowed ({preflight.label}, {simple.label})")


_DIGITS = re.compile(r"[0-9]{1,15}")  # not str.isdigit: "²" is a digit to it, not to int()
_Q = re.compile(r"(?:^|;)\s*q=([0-9]{1,15})")
_W = re.compile(r"(?:^|;)\s*w=([0-9]{1,15})")
_R = re.compile(r"(?:^|;)\s*r=([0-9]{1,15})")


def _limit(headers: httpx.Headers) -> tuple[int, int | None] | None:
    """(requests, window seconds or None) from the RateLimit headers a response carries."""
    policy = headers.get("ratelimit-policy")
    if policy is not None:
        first = policy.split(",", 1)[0]
        quota = _Q.search(first) or re.match(r"\s*([0-9]{1,15})", first)
        window = _W.search(first)
        if quota is not None:
            return int(quota.group(1)), int(window.group(1)) if window else None
    for name in ("ratelimit-limit", "x-ratelimit-limit"):
        value = headers.get(name, "").split(",", 1)[0].strip()
        if _DIGITS.fullmatch(value):
            return int(value), None
    return None


def _remaining(headers: httpx.Headers) -> int | None:
    state = headers.get("ratelimit")
    if state is not None and (match := _R.search(state.split(",", 1)[0])) is not None:
        return int(match.group(1))
    for name in ("ratelimit-remaining", "x-ratelimit-remaining"):
        value = headers.get(name, "").strip()
        if _DIGITS.fullmatch(value):
            return int(value)
    return None


def rate_limit(target: Target) -> Result:
    refused = [s for s in target.judged() if s.status == 429 and "retry-after" in s.headers]
    if refused:
        return _pass(f"enforced: {refused[0].label} with Retry-After: {refused[0].headers['retry-after']}")
    path = target.read_route()
    first = target.prober.fetch("GET", path)
    second = target.prober.fetch("GET", path)
    if second.status == 429:
        return _pass(f"enforced: {second.label} with Retry-After: {second.headers.get('retry-after')}")
    limit = _limit(second.headers)
    if limit is None:
        return _fail(f"no RateLimit-Policy or RateLimit-Limit header on {second.label}")
    quota, window = limit
    if window == 0:
        return _fail(f"a rate-limit window of 0 s on {second.label}")
    if window is None:
        if quota > _POLICY_QUOTA:
            return _fail(f"allows {quota} requests per window (the policy: 100 per 15 minutes)")
        return _not_checked(f"a limit of {quota} with no window (RateLimit-Policy w=): cannot tell it is per 15 min")
    # Read as the policy is usually implemented (express-rate-limit's fixed windows): at most
    # 100 in a window of 15 minutes, or in the windows that make up 15 minutes. A longer window
    # must not allow more than 100 either: it could admit them all in its first 15 minutes.
    admitted = quota if window >= _POLICY_WINDOW else quota * -(-_POLICY_WINDOW // window)
    if admitted > _POLICY_QUOTA:
        return _fail(f"allows {quota} requests per {window} s: up to {admitted} in 15 minutes (the policy: 100)")
    before, after = _remaining(first.headers), _remaining(second.headers)
    if before is None or after is None:
        return _fail(f"no remaining count on {second.label}: cannot tell requests are counted")
    if after >= before:
        return _fail(f"two requests left the remaining count at {before} then {after}: not counted")
    per = f" per {window} s" if window else ""
    return _pass(f"{quota} requests{per}; remaining {before} then {after} on GET {path}")


# --- operations ------------------------------------------------------------------------------
def health(target: Target) -> Result:
    answer = _usable(target.prober.get("/health"))
    body = answer.json_object()
    if answer.media_type not in ("application/health+json", "application/json") or body is None:
        return _fail(f"/health answered {answer.status} {answer.media_type or 'untyped'!r}, want a JSON object")
    status = body.get("status")
    if status not in ("pass", "warn", "fail"):
        return _fail(f"/health has status {status!r}, want pass, warn or fail")
    if (status == "fail") != (answer.status >= 500) or not (200 <= answer.status < 300 or answer.status >= 500):
        return _fail(f"/health answered {answer.status} with status {status!r}: a load balancer reads the code")
    checks = body.get("checks")
    named = f", {len(checks)} checks" if isinstance(checks, dict) else ""
    return _pass(f"/health {answer.status} status={status}{named}")


def monitor(target: Target) -> Result:
    answer = _usable(target.prober.get("/api/monitor"))
    if answer.status in (404, 405):
        return _fail(f"no /api/monitor ({answer.label})")
    if answer.status not in (401, 403):
        return _fail(f"/api/monitor answered {answer.status} to an anonymous caller")
    if len(answer.body) > 4096 or _LEAKS.search(answer.body[:_SCANNED]):
        return _fail(f"/api/monitor refused ({answer.status}) but its body carries data")
    return _pass(f"/api/monitor refuses anonymous callers ({answer.status})")


def openapi(target: Target) -> Result:
    answer = _usable(target.prober.get("/openapi.json"))
    document = answer.json_object()
    if answer.status != 200 or document is None:
        return _fail(f"/openapi.json answered {answer.status} {answer.media_type or 'untyped'!r}")
    version, paths = document.get("openapi"), document.get("paths")
    if not isinstance(version, str) or not isinstance(paths, dict):
        return _fail("/openapi.json has no openapi version or no paths")
    return _pass(f"OpenAPI {version}, {len(paths)} paths")


@dataclass(frozen=True)
class Check:
    name: str
    policy: str
    run: Callable[[Target], Result]


# In the order they run: those judging every answer come last, when every answer is in.
CHECKS: tuple[Check, ...] = (
    Check("HTTPS only", "Production environment uses HTTPS only", https_only),
    Check("OpenAPI", "OpenAPI/Swagger documentation", openapi),
    Check("health", "`/health` endpoint provides comprehensive system status", health),
    Check("monitor protected", "`/api/monitor` endpoint for detailed production metrics", monitor),
    Check("malformed input", "Input validation on all user-provided data", malformed_input),
    Check("body limit", "All user data is validated and sanitized before processing", body_limit),
    Check("CORS", "CORS configured for production domains only", cors),
    Check("rate limit", "Rate limiting implemented to prevent abuse (100 requests per 15 minutes per IP)",
          rate_limit),
    Check("error documents", "Comprehensive error handling", error_documents),
    Check("no internals in errors", "No sensitive information is logged or exposed in error messages",
          no_internals),
    Check("security headers", "Helmet.js provides comprehensive security headers", security_headers),
    Check("no server banner", "Helmet.js provides comprehensive security headers", no_banner),
    Check("CSP", "XSS protection through content security policies", content_security_policy),
    Check("HSTS", "Security headers enforced (HSTS, CSP, X-Frame-Options)", hsts),
)
