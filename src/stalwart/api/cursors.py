"""Opaque page cursors: the (timestamp, id) of the last row seen, as base64url JSON.

A cursor comes back from the client, so decoding is input validation: anything this API
could not have issued (bad base64 or JSON, a naive or out-of-range timestamp, an id that is
not a string or holds NUL, which PostgreSQL text cannot) is a 400, never a 500.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

import orjson
from starlette.exceptions import HTTPException

__all__ = ["decode_cursor", "encode_cursor"]

_MAX_ID = 64


def encode_cursor(at: datetime, row_id: str) -> str:
    raw = orjson.dumps([at.isoformat(), row_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at_text, row_id = orjson.loads(raw)
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError("naive datetime")
        at = at.astimezone(UTC)  # OverflowError near datetime.min/max
        if not isinstance(row_id, str) or "\x00" in row_id or len(row_id) > _MAX_ID:
            raise ValueError("not an id")
        return at, row_id
    except (binascii.Error, ValueError, TypeError, OverflowError):  # JSONDecodeError: ValueError
        raise HTTPException(400, "The cursor is not one this API issued.") from None
