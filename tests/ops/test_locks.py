"""Job locks: PostgreSQL advisory lock, Redis SET NX PX, file lock. One holder at a time."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from stalwart.data.engine import Database
from stalwart.data.errors import DependencyUnavailable
from stalwart.ops.locks import FileLock, PostgresLock, RedisLock, advisory_key, make_lock
from tests.conftest import REDIS_URL, PostgresDatabase, make_settings
from tests.stalling_proxy import StallingProxy

pytestmark = pytest.mark.anyio


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, socket_timeout=3)
    yield client
    await client.aclose()


async def test_file_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    a, b = FileLock(tmp_path / "locks" / "purge.lock"), FileLock(tmp_path / "locks" / "purge.lock")
    assert await a.acquire()
    assert not await b.acquire()
    await a.release()
    assert await b.acquire()
    await b.release()
    assert (tmp_path / "locks").stat().st_mode & 0o777 == 0o700


async def test_postgres_advisory_lock_is_exclusive_and_dies_with_its_session(
    postgres_db: PostgresDatabase,
) -> None:
    dsn = postgres_db.url.replace("+asyncpg", "")
    name = f"job-{uuid.uuid4().hex}"
    a, b = PostgresLock(dsn, name), PostgresLock(dsn, name)
    assert await a.acquire()
    assert not await b.acquire()
    assert not await PostgresLock(dsn, name).acquire()
    await a.release()
    assert await b.acquire()
    # A crashed holder: its connection goes away, and so does the lock.
    await b.conn.close()
    b.conn = None
    c = PostgresLock(dsn, name)
    assert await c.acquire()
    await c.release()
    assert advisory_key(name) != advisory_key(name + "x")
    assert -(2**63) <= advisory_key(name) < 2**63


async def test_redis_lock_is_exclusive_renewed_and_owner_released(redis: Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}lock:backup"
    a = RedisLock(redis, key, ttl_ms=1200)
    b = RedisLock(redis, key, ttl_ms=1200)
    try:
        assert await a.acquire()
        await asyncio.sleep(2.0)  # well past the TTL: still held, because it is renewed
        assert not await b.acquire()
        assert 0 < await redis.pttl(key) <= 1200
        await a.release()
        assert await redis.exists(key) == 0
        assert await b.acquire()
        # Someone whose lock expired must not delete the current holder's key.
        stale = RedisLock(redis, key, ttl_ms=1200)
        stale.token = "not-the-owner"
        await stale.release()
        assert await redis.exists(key) == 1
    finally:
        await a.release()
        await b.release()
    assert await redis.exists(key) == 0


async def test_redis_lock_survives_a_failed_renewal(redis: Redis, redis_prefix: str) -> None:
    """Redis unreachable for a moment: the renewer logs and retries instead of dying."""
    key = f"{redis_prefix}lock:purge"
    lock = RedisLock(redis, key, ttl_ms=1500)
    calls = 0
    real_eval = redis.eval

    async def flaky_eval(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis went away")
        return await real_eval(*args)  # type: ignore[arg-type]

    try:
        assert await lock.acquire()
        redis.eval = flaky_eval  # type: ignore[method-assign]
        await asyncio.sleep(1.2)  # two renewal ticks: the first fails, the second renews
        assert lock.renewer is not None
        assert not lock.renewer.done()
        assert calls >= 2
    finally:
        redis.eval = real_eval  # type: ignore[method-assign]
        await lock.release()
    assert await redis.exists(key) == 0


async def test_make_lock_picks_the_backend(tmp_path: Path, redis: Redis) -> None:
    sqlite = make_settings(tmp_path)
    assert isinstance(make_lock(sqlite, Database(sqlite), None, "purge"), FileLock)
    pg = make_settings(tmp_path, database_url="postgresql+asyncpg://u:p@127.0.0.1:5432/x")
    lock = make_lock(pg, Database(pg), None, "purge")
    assert isinstance(lock, PostgresLock)
    assert lock.dsn == "postgresql://u:p@127.0.0.1:5432/x"
    chosen = make_settings(tmp_path, scheduler_lock="redis", scheduler_lock_prefix="p:", redis_url=REDIS_URL)
    redis_lock = make_lock(chosen, Database(chosen), redis, "purge")
    assert isinstance(redis_lock, RedisLock)
    assert redis_lock.key == "p:purge"
    with pytest.raises(ValueError, match="needs redis_url"):
        make_lock(chosen, Database(chosen), None, "purge")
    # Settings refuse this pairing (tests/test_settings.py); a copy made without validation
    # still meets the lock's own check.
    forced = make_settings(tmp_path).model_copy(update={"scheduler_lock": "postgres"})
    with pytest.raises(ValueError, match="needs a PostgreSQL database_url"):
        make_lock(forced, Database(forced), None, "purge")


async def test_redis_lock_down_is_unavailable_not_busy_and_not_a_crash() -> None:
    # Nothing listens on port 1: a Redis that is down.
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        with pytest.raises(DependencyUnavailable):
            await RedisLock(down, "stalwart-test:lock:backup").acquire()
    finally:
        await down.aclose()


async def test_releasing_a_redis_lock_never_swallows_the_callers_cancellation(
    redis: Redis, redis_prefix: str
) -> None:
    lock = RedisLock(redis, f"{redis_prefix}lock:purge", ttl_ms=60_000)
    assert await lock.acquire()

    async def scheduler_loop() -> None:
        # Lifecycle._loop: the job's `finally` releases the lock, then the loop sleeps until
        # the next run (up to an hour).
        await lock.release()
        await asyncio.sleep(3600)

    task = asyncio.create_task(scheduler_loop())
    await asyncio.sleep(0)  # the task is now in release(), waiting for the renewer to stop
    task.cancel()  # shutdown: asyncio.run and anyio cancel a task once
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done, "the cancellation was swallowed: the task went on to sleep"
    assert task.cancelled()
    assert await redis.exists(lock.key) == 0  # released all the same


async def test_releasing_a_postgres_lock_ends_when_the_database_stops_answering(
    tmp_path: Path, postgres_db: PostgresDatabase
) -> None:
    proxy = await StallingProxy("127.0.0.1", 5432).start()
    try:
        url = postgres_db.url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        settings = make_settings(tmp_path, database_url=url, db_statement_timeout_ms=300, db_pool_timeout=0.2)
        lock = make_lock(settings, Database(settings), None, f"job-{uuid.uuid4().hex}")
        assert await lock.acquire()
        proxy.stall()  # the job runs; the database host freezes meanwhile
        with anyio.fail_after(10):
            await lock.release()  # before: waited for an answer that never came
    finally:
        await proxy.close()
    # The session is gone, and its advisory lock with it.
    again = PostgresLock(postgres_db.url.replace("+asyncpg", ""), lock.name)
    with anyio.fail_after(10):
        while not await again.acquire():
            await asyncio.sleep(0.1)
    await again.release()


async def test_a_failed_release_is_logged_by_error_type_not_the_clients_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """redis-py's messages name the host and port it could not reach."""
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.5, socket_connect_timeout=0.5)
    lock = RedisLock(client, "stalwart-test:released")
    lock.token = "held-by-this-instance"
    try:
        with caplog.at_level(logging.WARNING, logger="stalwart.ops"):
            await lock.release()
    finally:
        await client.aclose()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "stalwart.ops"]
    assert line == "lock stalwart-test:released: release failed: ConnectionError"
    assert "127.0.0.1" not in caplog.text


class _RedisThatLosesCancellations:
    """What redis-py 8 does about half the time: a cancellation during a command is lost and the
    command returns normally."""

    def __init__(self) -> None:
        self.renewals = 0
        self.loses_cancellations = True

    async def set(self, *args: object, **kwargs: object) -> bool:
        return True

    async def eval(self, script: str, numkeys: int, *args: object) -> int:
        self.renewals += 1
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if not self.loses_cancellations:
                raise
        return 1


async def test_release_ends_even_when_redis_loses_the_renewers_cancellation() -> None:
    redis = _RedisThatLosesCancellations()
    lock = RedisLock(redis, "stalwart-test:lost-cancel", ttl_ms=3)  # type: ignore[arg-type]
    assert await lock.acquire()
    await asyncio.sleep(0.2)  # the renewer spends nearly all its time inside a command
    assert redis.renewals > 1
    renewer = lock.renewer
    assert renewer is not None
    releasing = asyncio.ensure_future(lock.release())
    done, _ = await asyncio.wait({releasing}, timeout=2)
    redis.loses_cancellations = False  # whatever happened, let this test's tasks end
    if not done:
        renewer.cancel()
        await asyncio.wait({releasing, renewer}, timeout=2)
    assert done, "release() was still waiting for the renewer"
    assert renewer.done()
