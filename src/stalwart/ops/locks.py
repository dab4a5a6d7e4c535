"""Cluster-wide, non-blocking job locks: at most one instance runs a given job at a time.

Three backends, chosen by `scheduler_lock` (auto: PostgreSQL when the database is PostgreSQL,
else a file lock under data_dir/locks):

* PostgreSQL: `pg_try_advisory_lock` on a dedicated connection. The lock lives as long as
  that connection, so a crashed instance never leaves it behind.
* Redis: `SET key token NX PX ttl`, renewed while held, released only by its owner (Lua).
* File: `flock` on a file under data_dir/locks (instances on one host sharing one SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from stalwart.data.engine import Database
from stalwart.data.errors import DependencyUnavailable
from stalwart.settings import Settings

__all__ = ["FileLock", "JobLock", "PostgresLock", "RedisLock", "make_lock"]

logger = logging.getLogger("stalwart.ops")


class JobLock(Protocol):
    name: str

    async def acquire(self) -> bool:
        """Take the lock if it is free; False (at once) when another holder has it."""

    async def release(self) -> None: ...


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_try_advisory_lock."""
    return int.from_bytes(hashlib.sha256(f"stalwart:{name}".encode()).digest()[:8], "big", signed=True)


class PostgresLock:
    def __init__(self, dsn: str, name: str, command_timeout: float = 15.0) -> None:
        self.dsn = dsn
        self.name = name
        self.key = advisory_key(name)
        self.conn: Any = None
        # The lock's connection lives as long as the job (a backup: minutes). A database that
        # stops answering meanwhile must not hang the unlock forever: the job would count as
        # running (409 to every backup request) until the process restarts.
        self.command_timeout = command_timeout

    async def acquire(self) -> bool:
        import asyncpg

        try:
            conn = await asyncpg.connect(self.dsn, timeout=10, command_timeout=self.command_timeout)
        except asyncpg.PostgresError as exc:  # refused by the server (too many clients, starting)
            raise DependencyUnavailable(f"job lock {self.name}: database refused") from exc
        try:
            got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key))
        except BaseException:
            # Not close(): it waits for the server, which may be the thing not answering.
            conn.terminate()
            raise
        if not got:
            await conn.close()
            return False
        self.conn = conn
        return True

    async def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", self.key)
        except Exception as exc:  # closing the session below frees the lock anyway
            logger.warning("lock %s: unlock failed: %s", self.name, type(exc).__name__)
        finally:
            # Closing the session frees the lock even if the unlock above failed. Bounded: a
            # server that does not answer gets the connection dropped instead.
            try:
                await conn.close(timeout=self.command_timeout)
            except asyncio.CancelledError:
                conn.terminate()
                raise
            except Exception:  # timed out, or the connection was already gone
                conn.terminate()


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"


class RedisLock:
    def __init__(self, redis: Redis, key: str, ttl_ms: int = 60_000) -> None:
        self.redis = redis
        self.name = key
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = ""
        self.renewer: asyncio.Task[None] | None = None

    async def acquire(self) -> bool:
        token = secrets.token_hex(16)
        try:
            taken = await self.redis.set(self.key, token, nx=True, px=self.ttl_ms)
        except (RedisError, OSError) as exc:
            # Not "busy": nobody may hold it. redis-py's errors are not the builtin
            # ConnectionError/TimeoutError, so without this an admin's backup request got a 500.
            raise DependencyUnavailable(f"job lock {self.key}: Redis unavailable") from exc
        if not taken:
            return False
        self.token = token
        self.renewer = asyncio.create_task(self._renew(), name=f"lock-renew:{self.key}")
        return True

    async def _renew(self) -> None:
        # A job may outlive the TTL (a long backup); the TTL only bounds a crashed holder.
        # Released means `self.renewer` no longer names this task. Checked after each call, not
        # left to the cancellation alone: redis-py 8 loses a cancellation that arrives during a
        # command about half the time, and this loop would then renew forever while release()
        # waited for it.
        me = asyncio.current_task()
        while self.renewer is me:
            await asyncio.sleep(self.ttl_ms / 3000)
            if self.renewer is not me:
                return
            try:
                renewed = await self.redis.eval(_RENEW, 1, self.key, self.token, str(self.ttl_ms))
            except (RedisError, OSError) as exc:
                # Keep trying: two more chances before the TTL runs out.
                logger.warning("lock %s: renewal failed: %s", self.key, type(exc).__name__)
                continue
            if self.renewer is not me:
                return
            if not renewed:
                logger.warning("lock %s expired while held; another instance may run the job", self.key)
                return

    async def release(self) -> None:
        renewer, self.renewer = self.renewer, None
        try:
            if renewer is not None:
                renewer.cancel()
                # asyncio.wait, not `await renewer` under suppress(CancelledError): that also
                # swallowed a cancellation of the task releasing the lock, which then went on
                # (the scheduler loop to its hour-long sleep) as if never cancelled.
                await asyncio.wait({renewer})
                if not renewer.cancelled():
                    with contextlib.suppress(Exception):
                        renewer.exception()  # retrieved: logged by _renew already if it matters
        finally:
            # Even when cancelled meanwhile: one call, bounded by the client's socket timeout.
            if self.token:
                token, self.token = self.token, ""
                try:
                    await self.redis.eval(_RELEASE, 1, self.key, token)
                except (RedisError, OSError) as exc:  # the key expires with its TTL anyway
                    logger.warning("lock %s: release failed: %s", self.key, type(exc).__name__)


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.stem
        self.fd: int | None = None

    async def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    async def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def make_lock(settings: Settings, db: Database, redis: Redis | None, name: str) -> JobLock:
    """The lock for job `name` under the configured backend."""
    kind = settings.scheduler_lock
    if kind == "auto":
        kind = "postgres" if db.is_postgres else "file"
    if kind == "postgres":
        if not db.is_postgres:
            raise ValueError("scheduler_lock=postgres needs a PostgreSQL database_url")
        dsn = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresLock(dsn, name, command_timeout=settings.db_command_timeout)
    if kind == "redis":
        if redis is None:
            raise ValueError("scheduler_lock=redis needs redis_url")
        return RedisLock(redis, f"{settings.scheduler_lock_prefix}{name}")
    return FileLock(settings.data_dir / "locks" / f"{name}.lock")
