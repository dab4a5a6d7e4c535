"""The audit's requests: bounded in time and in bytes, whatever the audited server does.

An audited server is not trusted to behave: it may trickle its answer (head or body) a byte at
a time, send a body of gigabytes or never answer. httpx's timeout bounds each read, not the
whole request, so each request runs under a wall-clock limit of its own (an asyncio timeout
around the whole exchange, on a loop of the prober's), the whole audit under a deadline, and at
most `max_body` bytes of a body are kept (the rest is not read).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
import orjson

__all__ = ["AuditError", "OutOfTime", "Prober", "Sample", "https_redirect"]

_MARGIN = 0.5  # seconds


def https_redirect(sample: Sample, host: str) -> httpx.URL | None:
    """Where `sample` redirects, if it is a redirect to https on `host`."""
    if sample.status not in (301, 302, 307, 308):
        return None
    try:
        to = httpx.URL(sample.headers.get("location", ""))
    except (httpx.InvalidURL, ValueError):
        return None
    return to if to.scheme == "https" and to.host == host else None


class AuditError(Exception):
    """The audit cannot run at all: a bad URL, an unreachable or untrusted server."""


class OutOfTime(Exception):
    """The audit's deadline has passed; the checks left are not run."""


@dataclass(frozen=True)
class Sample:
    """One response the audit received (its body cut at the prober's `max_body`)."""

    method: str
    url: str
    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool = False
    _json: list[object] = field(default_factory=list, repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.status} to {self.method} {httpx.URL(self.url).path}"

    @property
    def media_type(self) -> str:
        value: str = self.headers.get("content-type", "")
        return value.split(";", 1)[0].strip().lower()

    def json(self) -> object:
        """The body as JSON, or None if it is not JSON (or was cut)."""
        if not self._json:
            value: object = None
            if not self.truncated:
                try:
                    value = orjson.loads(self.body)
                except orjson.JSONDecodeError:
                    value = None
            self._json.append(value)
        return self._json[0]

    def json_object(self) -> dict[str, object] | None:
        value = self.json()
        return value if isinstance(value, dict) else None


class Prober:
    """Sends the audit's requests to one server and keeps every answer for the checks."""

    def __init__(
        self,
        base_url: str,
        *,
        verify: bool = True,
        request_seconds: float = 10.0,
        audit_seconds: float = 120.0,
        max_body: int = 1 << 20,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        try:
            url = httpx.URL(base_url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise AuditError(f"{base_url!r} is not a URL") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise AuditError(f"{base_url!r} is not an http:// or https:// URL")
        self.request_seconds = request_seconds
        self.deadline = time.monotonic() + audit_seconds
        self.max_body = max_body
        self.samples: list[Sample] = []
        self._cache: dict[tuple[str, str], Sample] = {}
        # The checks are plain functions; each request runs to completion on this loop.
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            base_url=url, verify=verify, follow_redirects=False, transport=transport,
            # identity: the raw bytes are the body (a compressed one could expand past max_body).
            headers={"user-agent": "stalwart-audit", "accept-encoding": "identity"},
            trust_env=False,
        )

    @property
    def base_url(self) -> httpx.URL:
        return self._client.base_url

    def rebase(self, base_url: httpx.URL) -> None:
        self._client.base_url = base_url
        self._cache.clear()

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._client.aclose())
        finally:
            self._loop.close()

    def get(self, path: str) -> Sample:
        """GET `path`, once per audit: checks that look at the same answer share it."""
        key = (str(self.base_url), path)
        if key not in self._cache:
            self._cache[key] = self.fetch("GET", path)
        return self._cache[key]

    def fetch(
        self,
        method: str,
        path_or_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> Sample:
        """One request, answered within `request_seconds`; httpx errors propagate."""
        now = time.monotonic()
        if now >= self.deadline:
            raise OutOfTime
        limit = min(self.request_seconds, self.deadline - now)
        request = self._client.build_request(
            method, path_or_url, headers=headers, content=content, timeout=httpx.Timeout(limit)
        )
        sample = self._loop.run_until_complete(self._exchange(request, limit))
        self.samples.append(sample)
        return sample

    async def _exchange(self, request: httpx.Request, limit: float) -> Sample:
        try:
            # A little past httpx's own timeouts: a connection that never opens must end as
            # httpx's ConnectTimeout (a port that drops is "not served"), not as this limit.
            async with asyncio.timeout(limit + _MARGIN):
                response = await self._client.send(request, stream=True)
                try:
                    chunks: list[bytes] = []
                    size, truncated = 0, False
                    async for chunk in response.aiter_raw():
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > self.max_body:
                            truncated = True
                            break
                finally:
                    await response.aclose()
        except TimeoutError:
            raise httpx.ReadTimeout(f"no whole answer within {limit:.0f} s", request=request) from None
        body = b"".join(chunks)[: self.max_body]
        return Sample(request.method, str(request.url), response.status_code, response.headers, body, truncated)
