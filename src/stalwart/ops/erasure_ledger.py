"""The erasure ledger: which accounts were erased, kept apart from the database and its backups.

A restored backup may predate an erasure; `stalwart restore` re-applies the erasures the
ledger holds so an erased person does not come back. The ledger holds only what re-applying
needs: the account id, a keyed hash of the email (never the email), and the time.
One JSON object per line, append-only, fsynced before the erasure commits.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from stalwart.data.types import utcnow
from stalwart.settings import Settings

__all__ = ["Erasure", "append", "email_hash", "ledger_path", "read"]


@dataclass(frozen=True, slots=True)
class Erasure:
    account_id: str
    email_hash: str
    at: datetime


def ledger_path(settings: Settings) -> Path:
    if settings.erasure_ledger_path is not None:
        return settings.erasure_ledger_path
    return settings.data_dir / "erasures" / "ledger.jsonl"


def email_hash(settings: Settings, email: str) -> str:
    # Keyed: a plain SHA-256 of an email is reversed by hashing candidate addresses.
    key = settings.secret_key.get_secret_value().encode()
    return hmac.new(key, b"erasure-email:" + email.strip().lower().encode(), hashlib.sha256).hexdigest()


def append(settings: Settings, account_id: str, email: str, at: datetime | None = None) -> Erasure:
    """Record one erasure durably (flushed and fsynced) before the caller commits it."""
    entry = Erasure(account_id, email_hash(settings, email), at or utcnow())
    line = (
        orjson.dumps(
            {
                "v": 1,
                "account_id": entry.account_id,
                "email_hash": entry.email_hash,
                "at": entry.at.isoformat(),
            }
        )
        + b"\n"
    )
    path = ledger_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one whole line per writer, across processes
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def read(settings: Settings) -> list[Erasure]:
    """Every recorded erasure, oldest first. A torn last line (crash mid-write) is skipped."""
    path = ledger_path(settings)
    if not path.exists():
        return []
    entries: list[Erasure] = []
    with path.open("rb") as fh:
        for raw in fh:
            try:
                item = orjson.loads(raw)
                entries.append(
                    Erasure(
                        str(item["account_id"]),
                        str(item["email_hash"]),
                        datetime.fromisoformat(item["at"]),
                    )
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return entries
