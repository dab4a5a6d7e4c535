"""`stalwart audit URL`: check a live API against the production policy from the outside.

Each check sends real requests and compares what comes back with what the policy asks for
(`checks.py`). It needs no access to the server's code or configuration, so it audits any API,
not only Stalwart: the routes it tries come from the API's OpenAPI document (`discovery.py`).
It generates no load and changes nothing: about 20 requests, GETs, one OPTIONS, and bodies
that are not valid JSON sent only to routes that declare a required JSON body. Each request is
bounded in time and in bytes read, and so is the whole audit (`probe.py`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import httpx

from stalwart.audit.checks import CHECKS, HELMET_EXPECTED, Check, NotChecked, Outcome, Result, Target
from stalwart.audit.discovery import discover
from stalwart.audit.probe import AuditError, OutOfTime, Prober, https_redirect

__all__ = ["CHECKS", "HELMET_EXPECTED", "AuditError", "Check", "Finding", "Outcome", "run_audit"]


@dataclass(frozen=True)
class Finding:
    check: str
    policy: str
    outcome: Outcome
    detail: str


def run_audit(
    base_url: str,
    *,
    verify: bool = True,
    request_seconds: float = 10.0,
    audit_seconds: float = 120.0,
    http_port: int = 80,
    body_size: int = 2 << 20,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[Finding]:
    """Run every check against `base_url`; raises AuditError if the API cannot be reached."""
    prober = Prober(
        base_url.rstrip("/"), verify=verify, request_seconds=request_seconds,
        audit_seconds=audit_seconds, transport=transport,
    )
    try:
        target = _start(prober, http_port, body_size)
        return [_run(check, target) for check in CHECKS]
    finally:
        prober.close()


def _start(prober: Prober, http_port: int, body_size: int) -> Target:
    """First contact: reachable at all? Plain http sent on to https? Which routes to try?"""
    try:
        root = prober.get("/")
    except httpx.ConnectError as exc:
        if isinstance(exc.__context__, ssl.SSLCertVerificationError) or "CERTIFICATE" in str(exc):
            raise AuditError(f"{prober.base_url}: the TLS certificate is not trusted (--insecure to skip)") from exc
        raise AuditError(f"{prober.base_url}: cannot connect") from exc
    except (httpx.HTTPError, OutOfTime) as exc:
        raise AuditError(f"{prober.base_url}: no answer ({type(exc).__name__})") from exc
    redirect = None
    not_served: list[str] = []
    to = https_redirect(root, prober.base_url.host) if prober.base_url.scheme == "http" else None
    if to is not None:
        # The policy's answer to plain http: audit the API where it is served. The redirect
        # itself (often a proxy's, with none of the API's headers) is not the API's answer.
        redirect = (root.status, root.headers["location"])
        not_served = [root.url]
        prober.rebase(to.copy_with(path="/", query=None, fragment=None))
        try:
            prober.get("/")
        except (httpx.HTTPError, OutOfTime) as exc:
            raise AuditError(f"{prober.base_url} (redirected to): no answer ({type(exc).__name__})") from exc
    try:
        document = prober.get("/openapi.json").json()
    except (httpx.HTTPError, OutOfTime):
        document = None
    routes = discover(document)
    # The API's own routes, read once each: every check judging "every answer" sees them.
    for path in (*routes.reads, *routes.item_reads):
        try:
            prober.get(path)
        except (httpx.HTTPError, httpx.InvalidURL):
            continue  # judged by the checks that read it again, if any
        except OutOfTime:
            break  # the checks will each say so
    return Target(
        prober, routes, http_port=http_port, body_size=body_size, redirect=redirect, not_served=not_served
    )


def _run(check: Check, target: Target) -> Finding:
    try:
        result = check.run(target)
    except NotChecked as exc:
        result = Result(Outcome.NOT_CHECKED, str(exc))
    except OutOfTime:
        result = Result(Outcome.NOT_CHECKED, "the audit's time ran out before this check")
    except httpx.TimeoutException as exc:
        result = Result(Outcome.FAIL, f"no answer in time ({exc})")
    except httpx.HTTPError as exc:
        result = Result(Outcome.FAIL, f"request failed: {type(exc).__name__}")
    except Exception as exc:  # an answer this check cannot read: the report goes on
        result = Result(Outcome.NOT_CHECKED, f"could not judge the answer ({type(exc).__name__})")
    return Finding(check.name, check.policy, result.outcome, result.detail)
