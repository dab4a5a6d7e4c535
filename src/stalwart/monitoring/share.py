"""How the workers and instances of one service see each other's figures.

Each process publishes its snapshot (JSON bytes) every `metrics_publish_seconds`; a reader
adds its own live figures to every other snapshot younger than `metrics_stale_seconds`.

* `RedisShare`: one key per process, `{prefix}{service}:{instance}`, with a TTL, plus a sorted
  set `{prefix}{service}:instances` scored by publish time (readers never SCAN). Covers every
  worker of every instance that uses the same Redis.
* `FolderShare`: one file per process, `{instance}.json`, replaced atomically (write to a
  temporary name, then `os.replace`). Covers the workers of one host; files of dead
  processes are ignored once stale and removed after a minute.
* `NoShare`: this process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Protocol

from redis.asyncio import Redis

__all__ = ["FolderShare", "NoShare", "RedisShare", "SnapshotShare"]


class SnapshotShare(Protocol):
    mode: str

    async def publish(self, instance: str, payload: bytes) -> None: ...

    async def collect(self, exclude: str) -> list[bytes]:
        """The live snapshots of every other process."""
        ...

    async def remove(self, instance: str) -> None: ...


class NoShare:
    mode = "off"

    async def publish(self, instance: str, payload: bytes) -> None:
        return None

    async def collect(self, exclude: str) -> list[bytes]:
        return []

    async def remove(self, instance: str) -> None:
        return None


class RedisShare:
    mode = "redis"

    def __init__(
        self, redis: Redis, *, prefix: str, service: str, stale_seconds: float, timeout: float
    ) -> None:
        self.redis = redis
        self.base = f"{prefix}{service}:"
        self.index = f"{self.base}instances"
        self.stale_seconds = stale_seconds
        self.timeout = timeout

    async def publish(self, instance: str, payload: bytes) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.base + instance, payload, px=int(self.stale_seconds * 1000))
            pipe.zadd(self.index, {instance: now})
            pipe.zremrangebyscore(self.index, "-inf", now - self.stale_seconds)
            pipe.expire(self.index, int(self.stale_seconds * 6) + 1)
            await asyncio.wait_for(pipe.execute(), self.timeout)

    async def collect(self, exclude: str) -> list[bytes]:
        now = time.time()
        members = await asyncio.wait_for(
            self.redis.zrangebyscore(self.index, now - self.stale_seconds, "+inf"), self.timeout
        )
        ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        keys = [self.base + i for i in ids if i != exclude]
        if not keys:
            return []
        values = await asyncio.wait_for(self.redis.mget(keys), self.timeout)
        return [v for v in values if isinstance(v, bytes)]

    async def remove(self, instance: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.base + instance)
            pipe.zrem(self.index, instance)
            await asyncio.wait_for(pipe.execute(), self.timeout)


class FolderShare:
    mode = "folder"
    _SUFFIX = ".json"
    _FORGET_AFTER = 60.0

    def __init__(self, folder: Path, *, stale_seconds: float) -> None:
        self.folder = folder
        self.stale_seconds = stale_seconds
        # A write still running in its thread when the process stops must not bring back the
        # file `remove` just deleted.
        self._lock = threading.Lock()
        self._removed: set[str] = set()

    def _write(self, instance: str, payload: bytes) -> None:
        with self._lock:
            if instance not in self._removed:
                self._write_file(instance, payload)

    def _write_file(self, instance: str, payload: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{instance}{self._SUFFIX}"
        temporary = self.folder / f".{instance}.tmp"
        temporary.write_bytes(payload)
        os.replace(temporary, target)

    def _read(self, exclude: str) -> list[bytes]:
        now = time.time()
        found: list[bytes] = []
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return found
        for entry in entries:
            name = entry.name
            if not name.endswith(self._SUFFIX) or name == f"{exclude}{self._SUFFIX}":
                continue
            try:
                age = now - entry.stat().st_mtime
                if age > self._FORGET_AFTER:
                    os.remove(entry.path)
                elif age <= self.stale_seconds:
                    found.append(Path(entry.path).read_bytes())
            except FileNotFoundError:  # replaced or removed by its writer meanwhile
                continue
        return found

    async def publish(self, instance: str, payload: bytes) -> None:
        await asyncio.to_thread(self._write, instance, payload)

    async def collect(self, exclude: str) -> list[bytes]:
        return await asyncio.to_thread(self._read, exclude)

    def _remove(self, instance: str) -> None:
        with self._lock:
            self._removed.add(instance)
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f"{instance}{self._SUFFIX}").unlink()

    async def remove(self, instance: str) -> None:
        await asyncio.to_thread(self._remove, instance)
