"""Timed disaster recovery of a 100,000-note database, on SQLite and on PostgreSQL.

Builds a database of 1,000 accounts x 100 notes (about 600 bytes of body each, two tags each,
so 200,000 note_tags rows), one token and a few audit events per account; then times, through
the same functions the CLI calls:

1. `stalwart backup` (online snapshot, zstd, AES-256-GCM when --encrypted),
2. `stalwart backup verify` (restore into a scratch database, compare row counts),
3. disaster: the database is deleted (SQLite file) or dropped (PostgreSQL),
4. `stalwart restore` (checks, load, migrate to head, re-apply the erasure ledger).

    .venv/bin/python benchmarks/restore_100k.py [--backend sqlite|postgres|both] [--encrypted]
        [--notes 100000]

PostgreSQL: a scratch database on postgresql://postgres@127.0.0.1:5432 (created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

from stalwart.data.engine import Database
from stalwart.data.migrate import migrate_to
from stalwart.data.models import Account, AuditEvent, Note, NoteTag, Token
from stalwart.data.types import utcnow
from stalwart.ops.backup import create_backup
from stalwart.ops.restore import restore_archive, verify_archive
from stalwart.settings import Settings

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
BODY = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 11)[:600]


async def populate(settings: Settings, notes: int, per_account: int = 100) -> None:
    db = Database(settings)
    await db.start()
    now = utcnow()
    try:
        async with db.engine.begin() as conn:
            accounts = notes // per_account
            account_ids = [str(uuid.uuid4()) for _ in range(accounts)]
            await conn.execute(
                insert(Account),
                [
                    {
                        "id": a,
                        "email": f"user{i}@example.com",
                        "password_hash": "$argon2id$" + "x" * 80,
                        "display_name": f"User {i}",
                        "role": "user",
                        "created_at": now,
                        "updated_at": now,
                        "last_login_at": now,
                    }
                    for i, a in enumerate(account_ids)
                ],
            )
            await conn.execute(
                insert(Token),
                [
                    {
                        "id": str(uuid.uuid4()),
                        "account_id": a,
                        "token_hash": uuid.uuid4().hex * 2,
                        "created_at": now,
                        "expires_at": now + timedelta(days=30),
                        "revoked_at": None,
                    }
                    for a in account_ids
                ],
            )
            await conn.execute(
                insert(AuditEvent),
                [
                    {
                        "id": str(uuid.uuid4()),
                        "at": now,
                        "event": event,
                        "subject": a,
                        "actor": a,
                        "ip": "203.0.113.0",
                        "details": {},
                    }
                    for a in account_ids
                    for event in ("account.registered", "auth.login", "token.created")
                ],
            )
            batch_notes: list[dict[str, object]] = []
            batch_tags: list[dict[str, object]] = []
            for n in range(notes):
                note_id = str(uuid.uuid4())
                owner = account_ids[n % accounts]
                batch_notes.append(
                    {
                        "id": note_id,
                        "account_id": owner,
                        "title": f"Note {n}",
                        "body": BODY,
                        "tags": ["work", f"t{n % 50}"],
                        "created_at": now,
                        "updated_at": now,
                        "version": 1,
                        "deleted_at": None,
                    }
                )
                batch_tags += [{"note_id": note_id, "tag": t, "account_id": owner} for t in ("work", f"t{n % 50}")]
                if len(batch_notes) == 5000:
                    await conn.execute(insert(Note), batch_notes)
                    await conn.execute(insert(NoteTag), batch_tags)
                    batch_notes, batch_tags = [], []
            if batch_notes:
                await conn.execute(insert(Note), batch_notes)
                await conn.execute(insert(NoteTag), batch_tags)
    finally:
        await db.close()


async def pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def destroy(settings: Settings, backend: str, name: str) -> None:
    if backend == "sqlite":
        path = settings.data_dir / "stalwart.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    else:
        asyncio.run(pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


def run(backend: str, notes: int, encrypted: bool) -> dict[str, float | int | str]:
    with tempfile.TemporaryDirectory(prefix="stalwart-bench-") as tmp:
        name = f"stalwart_bench_{uuid.uuid4().hex[:8]}"
        url = "" if backend == "sqlite" else f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            env="test",
            data_dir=Path(tmp),
            database_url=url,
            backup_encryption_key="bench-key-0123456789abcdef0123456789" if encrypted else None,
        )
        if backend == "postgres":
            asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
        try:
            migrate_to(settings.effective_database_url)
            t0 = time.perf_counter()
            asyncio.run(populate(settings, notes))
            t_populate = time.perf_counter() - t0

            t0 = time.perf_counter()
            result = asyncio.run(create_backup(settings))
            t_backup = time.perf_counter() - t0

            t0 = time.perf_counter()
            verify_archive(settings, result.path)
            t_verify = time.perf_counter() - t0

            destroy(settings, backend, name)
            t0 = time.perf_counter()
            report = restore_archive(settings, result.path)
            t_restore = time.perf_counter() - t0
            assert report.counts == result.manifest.row_counts
            return {
                "backend": backend,
                "notes": result.manifest.row_counts["notes"],
                "rows": sum(result.manifest.row_counts.values()),
                "data_mb": result.manifest.data.size / 1e6,
                "archive_mb": result.path.stat().st_size / 1e6,
                "populate_s": t_populate,
                "backup_s": t_backup,
                "verify_s": t_verify,
                "restore_s": t_restore,
            }
        finally:
            if backend == "postgres":
                asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--notes", type=int, default=100_000)
    parser.add_argument("--encrypted", action="store_true")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(f"cpus={os.cpu_count()} notes={args.notes} encrypted={args.encrypted}")
    print("| backend | notes | rows | data MB | archive MB | backup s | verify s | restore s |")
    print("|---|---|---|---|---|---|---|---|")
    for backend in backends:
        r = run(backend, args.notes, args.encrypted)
        print(
            f"| {r['backend']} | {r['notes']:,} | {r['rows']:,} | {r['data_mb']:.1f} | "
            f"{r['archive_mb']:.1f} | {r['backup_s']:.1f} | {r['verify_s']:.1f} | "
            f"{r['restore_s']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
