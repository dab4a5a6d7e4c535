"""Process and host figures, and the event-loop lag sampler.

Event-loop lag is how late `asyncio.sleep(interval)` wakes up: anything that blocks the loop
(CPU-bound work, a synchronous call) delays every request by as much, and shows here.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import psutil

__all__ = ["ProcessSampler", "ProcessStats", "SystemStats", "system_stats"]

_TREND_STEP = 10  # seconds between RSS trend samples
_TREND_POINTS = 15 * 60 // _TREND_STEP
_LAG_WINDOW = 60.0  # seconds over which loop_lag_max_ms is taken


@dataclass
class ProcessStats:
    pid: int
    rss_bytes: int
    cpu_percent: float
    open_fds: int | None
    threads: int
    loop_lag_ms: float
    loop_lag_max_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SystemStats:
    cpu_count: int
    cpu_percent: float
    load_1: float
    load_5: float
    load_15: float
    memory_total_bytes: int
    memory_available_bytes: int
    memory_used_percent: float


def system_stats() -> SystemStats:
    load_1, load_5, load_15 = os.getloadavg()
    memory = psutil.virtual_memory()
    return SystemStats(
        cpu_count=psutil.cpu_count() or 1,
        cpu_percent=psutil.cpu_percent(None),
        load_1=round(load_1, 2),
        load_5=round(load_5, 2),
        load_15=round(load_15, 2),
        memory_total_bytes=int(memory.total),
        memory_available_bytes=int(memory.available),
        memory_used_percent=float(memory.percent),
    )


class ProcessSampler:
    """Samples this process: RSS (with a 15-minute trend), CPU, descriptors, threads, loop lag."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement
        psutil.cpu_percent(None)
        self._lags: deque[tuple[float, float]] = deque()
        self.trend: deque[tuple[float, int]] = deque(maxlen=_TREND_POINTS)
        self.stats = self._read(0.0)

    def _read(self, lag: float) -> ProcessStats:
        process = self._process
        with process.oneshot():
            rss = int(process.memory_info().rss)
            cpu = float(process.cpu_percent(None))
            threads = int(process.num_threads())
            num_fds = getattr(process, "num_fds", None)
            fds = int(num_fds()) if callable(num_fds) else None
        now = time.monotonic()
        lags = self._lags
        lags.append((now, lag))
        while lags and lags[0][0] < now - _LAG_WINDOW:
            lags.popleft()
        return ProcessStats(
            pid=os.getpid(),
            rss_bytes=rss,
            cpu_percent=round(cpu, 1),
            open_fds=fds,
            threads=threads,
            loop_lag_ms=round(lag * 1000, 3),
            loop_lag_max_ms=round(max(v for _, v in lags) * 1000, 3),
        )

    def sample(self, lag: float) -> ProcessStats:
        """Record one loop-lag measurement (seconds) and re-read the process figures."""
        self.stats = stats = self._read(max(lag, 0.0))
        aligned = float(int(time.time()) // _TREND_STEP * _TREND_STEP)
        if not self.trend or self.trend[-1][0] != aligned:
            self.trend.append((aligned, stats.rss_bytes))
        return stats

    def rss_now(self) -> int:
        return int(self._process.memory_info().rss)
