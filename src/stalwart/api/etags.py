"""HTTP validators for API reads and writes: ETag, If-None-Match (304), If-Match (412)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

__all__ = ["check_if_match", "list_etag", "not_modified", "version_etag"]


def version_etag(version: int) -> str:
    # Strong: a version number changes with every committed write of the note.
    return f'"v{version}"'


def list_etag(parts: Iterable[tuple[str, int]], next_url: str | None) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for note_id, version in parts:
        digest.update(f"{note_id}:{version};".encode())
    digest.update((next_url or "").encode())
    return f'"l{digest.hexdigest()}"'


def _tags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in header.split(",") if t.strip()]


def not_modified(request: Request, etag: str) -> Response | None:
    """A 304 when If-None-Match names the current representation (weak comparison)."""
    header = request.headers.get("if-none-match")
    if header is None:
        return None
    tags = _tags(header)
    if "*" in tags or etag in tags:
        # The 200 would vary by encoding (compression); a 304 must say the same (RFC 9110 15.4.5).
        return Response(status_code=304, headers={"ETag": etag, "Vary": "Accept-Encoding"})
    return None


def check_if_match(request: Request, etag: str) -> None:
    """Refuse a write made against a stale version (no lost update)."""
    header = request.headers.get("if-match")
    if header is None:
        return
    tags = [t for t in (s.strip() for s in header.split(",")) if t]
    if "*" in tags or etag in tags:  # strong comparison: W/ tags never match
        return
    raise HTTPException(412, "The note changed since the version in If-Match; fetch it again.")
