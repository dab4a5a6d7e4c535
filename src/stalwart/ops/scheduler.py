"""The service's data-lifecycle jobs: scheduled purge, scheduled and on-demand backups.

Started and stopped with the process resources (stalwart.resources). Each job runs under a
cluster-wide lock (ops/locks.py), so with several instances only one runs it at a time; a
scheduled run also checks the audit trail for the job's last run, so an instance that starts
(or wakes) just after another one ran the job does not run it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from sqlalchemy import func, select

from stalwart.background import cancel_all, run_in_daemon_thread
from stalwart.data.models import AuditEvent
from stalwart.data.types import utcnow
from stalwart.ops.archive import ArchiveError
from stalwart.ops.audit import record
from stalwart.ops.backup import BackupError, BackupResult, create_backup
from stalwart.ops.locks import JobLock, make_lock
from stalwart.ops.pg import PgToolError
from stalwart.ops.restore import verify_archive
from stalwart.ops.retention import PURGED_EVENT, purge

if TYPE_CHECKING:
    from stalwart.resources import Resources

__all__ = ["BACKUP_EVENT", "Job", "Lifecycle", "Outcome"]

logger = logging.getLogger("stalwart.ops")

BACKUP_EVENT = "backup.created"
Job = Literal["purge", "backup"]
Outcome = Literal["ran", "busy", "not_due", "failed"]
_LAST_RUN_EVENT: dict[Job, str] = {"purge": PURGED_EVENT, "backup": BACKUP_EVENT}


class Lifecycle:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.settings = resources.settings
        self.loops: list[asyncio.Task[None]] = []
        self.backup_task: asyncio.Task[None] | None = None
        self.intervals: dict[Job, float] = {
            "purge": self.settings.purge_interval_hours * 3600,
            "backup": self.settings.backup_interval_hours * 3600,
        }
        self.jobs: dict[Job, Callable[[str], Awaitable[None]]] = {
            "purge": self._purge,
            "backup": self._backup,
        }

    async def start(self) -> None:
        for job, interval in self.intervals.items():
            if interval > 0:
                self.loops.append(asyncio.create_task(self._loop(job, interval), name=f"lifecycle:{job}"))

    async def close(self) -> None:
        tasks = [*self.loops, *([self.backup_task] if self.backup_task else [])]
        await cancel_all(tasks)
        self.loops.clear()
        self.backup_task = None

    def lock(self, job: Job) -> JobLock:
        res = self.resources
        return make_lock(self.settings, res.db, res.redis, job)

    async def _loop(self, job: Job, interval: float) -> None:
        await asyncio.sleep(self.settings.scheduler_start_delay_seconds)
        while True:
            try:
                await self.run_job(job, actor="scheduler", scheduled=True)
            except Exception:
                logger.exception("scheduled %s failed", job)
            # Wake at least hourly: the due check keeps the interval, restarts do not reset it.
            await asyncio.sleep(min(interval, 3600))

    async def _due(self, job: Job) -> bool:
        async with self.resources.db.session() as session:
            last = await session.scalar(select(func.max(AuditEvent.at)).where(AuditEvent.event == _LAST_RUN_EVENT[job]))
        if last is None:
            return True
        return bool(utcnow() - last >= timedelta(seconds=self.intervals[job] * 0.9))

    async def run_job(self, job: Job, *, actor: str, scheduled: bool = False) -> Outcome:
        """Run `job` here unless another holder (this or another instance) is running it."""
        lock = self.lock(job)
        if not await lock.acquire():
            return "busy"
        try:
            if scheduled and not await self._due(job):
                return "not_due"
            await self.jobs[job](actor)
            return "ran"
        finally:
            await lock.release()

    @property
    def backup_running(self) -> bool:
        return self.backup_task is not None and not self.backup_task.done()

    async def start_backup(self, actor: str) -> bool:
        """Start a backup in the background; False when one is already running (anywhere)."""
        if self.backup_running:
            return False
        lock = self.lock("backup")
        if not await lock.acquire():
            return False
        self.backup_task = asyncio.create_task(self._backup_holding(lock, actor), name="lifecycle:backup")
        return True

    async def _backup_holding(self, lock: JobLock, actor: str) -> None:
        try:
            await self._backup(actor)
        except Exception:
            logger.exception("backup failed")
        finally:
            await lock.release()

    async def _purge(self, actor: str) -> None:
        report = await purge(self.resources.db, self.settings, actor=actor)
        logger.info("retention purge done", extra={"purge": report.counts()})

    async def _backup(self, actor: str) -> None:
        try:
            result: BackupResult = await create_backup(self.settings)
        except (BackupError, PgToolError, OSError) as exc:
            async with self.resources.db.session() as session:
                record(session, "backup.failed", actor=actor, details={"error": str(exc)[:200]})
                await session.commit()
            raise
        verified: bool | None = None
        if self.settings.backup_verify:
            try:
                # A daemon thread: the verification talks to the database without a bound,
                # and a process stopping meanwhile must not wait for it at exit.
                await run_in_daemon_thread(verify_archive, self.settings, result.path)
                verified = True
            except (ArchiveError, PgToolError) as exc:
                verified = False
                # Not the message: a PostgreSQL tool's quotes SQL and row data. The reason is
                # kept with the archive (GET /api/v1/admin/backups; `stalwart backup verify`).
                logger.error(
                    "backup verification failed: %s",
                    type(exc).__name__,
                    extra={"backup.archive": result.path.name},
                )
        async with self.resources.db.session() as session:
            record(
                session,
                BACKUP_EVENT,
                actor=actor,
                details={
                    "archive": result.path.name,
                    "size": result.path.stat().st_size,
                    "verified": verified,
                    "rows": sum(result.manifest.row_counts.values()),
                },
            )
            await session.commit()
        logger.info("backup written", extra={"archive": result.path.name, "verified": verified})
