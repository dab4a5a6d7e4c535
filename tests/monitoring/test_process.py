"""Process figures: CPU, memory and its trend, event-loop lag (src/stalwart/monitoring/process.py)."""

from __future__ import annotations

import os
import time

import psutil

from stalwart.monitoring.process import ProcessSampler, system_stats


def test_cpu_use_is_tracked() -> None:
    sampler = ProcessSampler()
    time.sleep(0.2)
    idle = sampler.sample(0.0).cpu_percent
    deadline = time.process_time() + 0.4
    while time.process_time() < deadline:  # burn CPU on purpose
        pass
    busy = sampler.sample(0.0).cpu_percent
    # psutil divides CPU time by wall time: on a machine shared with other work the share
    # of a busy loop can be well under 100 %.
    assert busy >= 10
    assert busy > idle + 5


def test_memory_and_its_trend_are_tracked() -> None:
    sampler = ProcessSampler()
    stats = sampler.sample(0.0)
    rss = psutil.Process().memory_info().rss
    assert abs(stats.rss_bytes - rss) < 32 * 1024 * 1024
    assert stats.pid == os.getpid()
    assert stats.threads >= 1
    assert stats.open_fds is not None
    assert stats.open_fds > 0
    assert len(sampler.trend) == 1
    t, value = sampler.trend[0]
    assert t % 10 == 0  # aligned, so the trends of several processes add up point by point
    assert value == stats.rss_bytes
    sampler.sample(0.0)
    assert len(sampler.trend) == 1  # one point per 10 seconds


def test_loop_lag_keeps_the_largest_of_the_last_minute() -> None:
    sampler = ProcessSampler()
    sampler.sample(0.300)
    stats = sampler.sample(0.002)
    assert stats.loop_lag_ms == 2.0
    assert stats.loop_lag_max_ms == 300.0


def test_system_figures() -> None:
    stats = system_stats()
    assert stats.cpu_count >= 1
    assert stats.memory_total_bytes > stats.memory_available_bytes > 0
    assert 0 <= stats.memory_used_percent <= 100
    assert stats.load_1 >= 0
