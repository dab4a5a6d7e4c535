"""The Redis backend against the real Redis at 127.0.0.1:6379 (unique key prefix per test)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import pytest
from redis.asyncio import Redis

from stalwart.policies.rate_limit import STATS, RedisBackend, parse_policy
from stalwart.policies.rate_limit import redis as redis_module
from stalwart.policies.rate_limit.redis import logger as rate_limit_logger
from tests.conftest import REDIS_URL

from .conftest import FakeClock, client_for, limited_app, new_redis

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

UNREACHABLE = "redis://127.0.0.1:1/0"
LOGGER = rate_limit_logger.name


def backend_on(redis: Redis, prefix: str, **kwargs: Any) -> RedisBackend:
    return RedisBackend(redis, prefix=prefix, **kwargs)


async def test_101st_request_in_window_is_429_and_first_after_window_is_200(
    redis_client: Redis, key_prefix: str
) -> None:
    backend = backend_on(redis_client, key_prefix)
    async with client_for(limited_app(backend)) as client:
        for i in range(100):
            r = await client.get("/x")
            assert r.status_code == 200, i
            assert r.headers["ratelimit"].startswith(f'"100-in-15min";r={99 - i};t=')
        r = await client.get("/x")
        assert r.status_code == 429
        assert r.json()["violated-policies"] == ["100-in-15min"]
        assert r.headers["retry-after"] in ("899", "900")
        # Move Redis's clock (inside the script) past the window instead of sleeping.
        backend.clock_offset_ms = 900_000
        r = await client.get("/x")
        assert r.status_code == 200
        assert r.headers["ratelimit"] == '"100-in-15min";r=99;t=900'


async def test_exact_headers(redis_client: Redis, key_prefix: str) -> None:
    backend = backend_on(redis_client, key_prefix)
    async with client_for(limited_app(backend, "2/15minutes")) as client:
        r = await client.get("/x")
        assert r.headers["ratelimit-policy"] == '"2-in-15min";q=2;w=900'
        assert r.headers["ratelimit"] == '"2-in-15min";r=1;t=900'
        backend.clock_offset_ms = 100_500
        r = await client.get("/x")
        assert r.headers["ratelimit"] == '"2-in-15min";r=0;t=800'
        r = await client.get("/x")
        assert r.status_code == 429
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["ratelimit"] == '"2-in-15min";r=0;t=800'
        assert r.headers["retry-after"] == "800"
        assert r.json()["type"].endswith("/quota-exceeded")


async def test_windows_follow_the_redis_clock(redis_client: Redis, key_prefix: str) -> None:
    backend = backend_on(redis_client, key_prefix)
    policy = parse_policy("5/15minutes")
    await backend.hit("k", policy)
    seconds, micros = await redis_client.time()
    reset_ms = int(await redis_client.hget(key_prefix + "k", "r"))
    redis_now_ms = seconds * 1000 + micros // 1000
    assert 0 <= redis_now_ms + 900_000 - reset_ms < 2_000
    ttl = await redis_client.pttl(key_prefix + "k")
    assert 898_000 < ttl <= 900_000  # the key expires with its window


async def test_two_app_instances_share_one_budget(key_prefix: str, redis_client: Redis) -> None:
    other_client = new_redis()
    try:
        first = limited_app(backend_on(redis_client, key_prefix))
        second = limited_app(backend_on(other_client, key_prefix))
        async with client_for(first) as a, client_for(second) as b:
            statuses = [(await (a if i % 2 else b).get("/x")).status_code for i in range(100)]
            assert statuses == [200] * 100
            assert (await a.get("/x")).status_code == 429
            assert (await b.get("/x")).status_code == 429
    finally:
        await other_client.aclose()


async def test_concurrent_burst_on_two_instances_never_exceeds_the_limit(redis_client: Redis, key_prefix: str) -> None:
    other_client = new_redis()
    try:
        first = limited_app(backend_on(redis_client, key_prefix))
        second = limited_app(backend_on(other_client, key_prefix))
        async with client_for(first) as a, client_for(second) as b:
            responses = await asyncio.gather(*(c.get("/x") for _ in range(150) for c in (a, b)))
        assert Counter(r.status_code for r in responses) == {200: 100, 429: 200}
        remaining = sorted(
            int(r.headers["ratelimit"].split("r=")[1].split(";")[0]) for r in responses if r.status_code == 200
        )
        assert remaining == list(range(100))
    finally:
        await other_client.aclose()


async def test_concurrent_burst_from_many_clients(redis_client: Redis, key_prefix: str) -> None:
    backend = backend_on(redis_client, key_prefix)
    app = limited_app(backend, "10/minute")
    before = (STATS.hits, STATS.rejections)
    clients = [client_for(app, f"198.51.100.{n}") for n in range(30)]
    try:
        per_client = await asyncio.gather(*(asyncio.gather(*(c.get("/x") for _ in range(20))) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    for responses in per_client:
        assert Counter(r.status_code for r in responses) == {200: 10, 429: 10}
    assert (backend.hits, backend.rejections) == (600, 300)
    assert (STATS.hits - before[0], STATS.rejections - before[1]) == (600, 300)


async def test_concurrent_hits_share_round_trips(redis_client: Redis, key_prefix: str) -> None:
    backend = backend_on(redis_client, key_prefix)
    calls: list[int] = []
    evaluate = backend._evaluate

    async def counting(batch: Any) -> Any:
        calls.append(sum(len(waiters) for _, _, waiters in batch))
        return await evaluate(batch)

    backend._evaluate = counting  # type: ignore[method-assign]
    app = limited_app(backend, "1000/minute")
    clients = [client_for(app, f"198.51.100.{n}") for n in range(10)]
    try:
        responses = await asyncio.gather(*(c.get("/x") for _ in range(30) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    assert all(r.status_code == 200 for r in responses)
    assert sum(calls) == 300
    assert len(calls) <= 5, calls  # one pipeline per batch, not one round trip per request


async def test_script_is_reloaded_after_noscript(redis_client: Redis, key_prefix: str) -> None:
    backend = backend_on(redis_client, key_prefix)
    policy = parse_policy("3/minute")
    assert (await backend.hit("k", policy)).remaining == 2
    backend._sha = b"0" * 40  # as after a Redis restart or SCRIPT FLUSH
    decision = await backend.hit("k", policy)
    assert (decision.allowed, decision.remaining, decision.degraded) == (True, 1, False)
    assert backend._sha != b"0" * 40
    assert backend.errors == 0


async def test_large_batches_are_split_and_survive_noscript(redis_client: Redis, key_prefix: str) -> None:
    backend = backend_on(redis_client, key_prefix)
    policy = parse_policy("2/minute")
    first = await asyncio.gather(*(backend.hit(f"k{i}", policy) for i in range(600)))
    assert [d.remaining for d in first] == [1] * 600
    backend._sha = b"0" * 40  # every chunk of the next pipeline gets NOSCRIPT
    second = await asyncio.gather(*(backend.hit(f"k{i}", policy) for i in range(600)))
    assert [(d.allowed, d.remaining, d.degraded) for d in second] == [(True, 0, False)] * 600
    third = await asyncio.gather(*(backend.hit(f"k{i}", policy) for i in (0, 299, 599)))
    assert [d.allowed for d in third] == [False] * 3
    assert backend.errors == 0


async def test_a_client_that_decodes_responses_works_too(redis_client: Redis, key_prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        backend = backend_on(redis, key_prefix)
        decisions = [await backend.hit("k", parse_policy("2/minute")) for _ in range(3)]
        assert [(d.allowed, d.remaining, d.degraded) for d in decisions] == [
            (True, 1, False),
            (True, 0, False),
            (False, 0, False),
        ]
        await redis.delete(key_prefix + "k")
    finally:
        await redis.aclose()


async def test_hit_is_usable_from_a_route(redis_client: Redis, key_prefix: str) -> None:
    backend = backend_on(redis_client, key_prefix)
    policy = parse_policy("5/15minutes")
    results = [await backend.hit("account:abc", policy) for _ in range(6)]
    assert [d.remaining for d in results] == [4, 3, 2, 1, 0, 0]
    assert [d.allowed for d in results] == [True] * 5 + [False]
    assert await redis_client.exists(key_prefix + "account:abc") == 1


async def test_redis_down_fails_open_with_one_logged_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    redis = new_redis(UNREACHABLE, timeout=0.3)
    backend = RedisBackend(redis, prefix="unused:", timeout=0.3)
    before = STATS.errors
    try:
        async with client_for(limited_app(backend, "2/minute")) as client:
            started = time.monotonic()
            responses = [await client.get("/x") for _ in range(20)]
            elapsed = time.monotonic() - started
    finally:
        await redis.aclose()
    assert [r.status_code for r in responses] == [200] * 20
    assert all(r.headers["ratelimit-policy"] == '"2-in-1min";q=2;w=60' for r in responses)
    assert all("ratelimit" not in r.headers for r in responses)
    assert elapsed < 2.0
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert records == [
        (
            "ERROR",
            "rate limit backend unavailable (ConnectionError); allowing requests until it recovers",
        )
    ]
    assert backend.errors == 20
    assert STATS.errors - before >= 20
    assert backend.down


async def test_redis_down_fail_closed_answers_503_problem() -> None:
    redis = new_redis(UNREACHABLE, timeout=0.3)
    backend = RedisBackend(redis, prefix="unused:", timeout=0.3, fail_open=False)
    try:
        async with client_for(limited_app(backend)) as client:
            r = await client.get("/x")
            r2 = await client.get("/x")
    finally:
        await redis.aclose()
    for response in (r, r2):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert response.json()["type"].endswith("/service-unavailable")
        assert "violated-policies" not in response.json()
        assert "127.0.0.1" not in response.text


class Blackhole:
    """A TCP server that accepts and never answers: a hung Redis."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.release = asyncio.Event()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        await self.release.wait()
        writer.close()

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        self.server.close()
        await self.server.wait_closed()
        await asyncio.sleep(0)
        for writer in self.writers:
            writer.close()


async def test_hung_redis_costs_one_timeout_not_a_hang(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with Blackhole() as url:
        redis = new_redis(url, timeout=5.0)  # the backend's own timeout must cut it short
        backend = RedisBackend(redis, prefix="unused:", timeout=0.2, retry_interval=30)
        try:
            async with client_for(limited_app(backend)) as client:
                started = time.monotonic()
                statuses = [(await client.get("/x")).status_code for _ in range(10)]
                elapsed = time.monotonic() - started
        finally:
            await redis.aclose()
    assert statuses == [200] * 10
    assert elapsed < 1.5  # one 0.2 s timeout, then no Redis until the retry interval
    errors = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert errors == ["rate limit backend unavailable (TimeoutError); allowing requests until it recovers"]


class Proxy:
    """A TCP relay to the real Redis that can be taken down and brought back on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{self.port}/0"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self.writers |= {writer, up_writer}
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_recovers_when_redis_returns(
    redis_client: Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    proxy = Proxy()
    url = await proxy.start()
    redis = new_redis(url, timeout=0.3)
    backend = RedisBackend(redis, prefix=key_prefix, timeout=0.3, retry_interval=0.0)
    try:
        async with client_for(limited_app(backend, "5/minute")) as client:
            first = await client.get("/x")
            assert first.headers["ratelimit"] == '"5-in-1min";r=4;t=60'
            await proxy.stop()
            during = [await client.get("/x") for _ in range(3)]
            assert [r.status_code for r in during] == [200, 200, 200]
            assert all("ratelimit" not in r.headers for r in during)
            assert backend.down
            await proxy.start()
            after = await client.get("/x")
            assert after.status_code == 200
            # Counting resumes where it stopped: the outage hits were not counted.
            assert after.headers["ratelimit"].startswith('"5-in-1min";r=3;t=')
            assert not backend.down
    finally:
        await redis.aclose()
        await proxy.stop()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert messages == [
        (
            "ERROR",
            "rate limit backend unavailable (ConnectionError); allowing requests until it recovers",
        ),
        ("INFO", "rate limit backend recovered; counting in Redis again"),
    ]
    assert backend.errors == 3


async def test_backend_close_waits_for_in_flight_hits(redis_client: Redis, key_prefix: str) -> None:
    backend = backend_on(redis_client, key_prefix)
    policy = parse_policy("10/minute")
    tasks = [asyncio.create_task(backend.hit("k", policy)) for _ in range(5)]
    await asyncio.sleep(0)
    await backend.aclose()
    decisions = await asyncio.gather(*tasks)
    assert sorted(d.remaining for d in decisions) == [5, 6, 7, 8, 9]


async def test_a_nonsense_reply_fails_open_instead_of_a_500(
    redis_client: Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    backend = backend_on(redis_client, key_prefix)

    async def nonsense(commands: list[bytes]) -> list[Any]:
        return [b"not:a:number"] * len(commands)

    backend._roundtrip = nonsense  # type: ignore[method-assign]
    async with client_for(limited_app(backend)) as client:
        r = await client.get("/x")
    assert r.status_code == 200
    assert "ratelimit" not in r.headers
    assert [m.getMessage() for m in caplog.records if m.name == LOGGER] == [
        "rate limit backend unavailable (ValueError); allowing requests until it recovers"
    ]


async def _count(redis: Redis, key: str) -> int:
    return int(await redis.hget(key, "c"))


async def test_a_large_budget_is_leased_and_spent_without_round_trips(redis_client: Redis, key_prefix: str) -> None:
    backend = backend_on(redis_client, key_prefix)  # default divisor 1024
    policy = parse_policy("10240/15minutes")  # a share of 10 hits per call
    decisions = [await backend.hit("k", policy) for _ in range(11)]
    assert backend.round_trips == 1
    assert await _count(redis_client, key_prefix + "k") == 11  # the hit and its share
    assert [d.remaining for d in decisions] == list(range(10239, 10228, -1))
    assert all(d.allowed and not d.degraded for d in decisions)
    assert backend.hits == 11
    await backend.hit("k", policy)  # the share is spent: Redis again, for the hit and a new share
    assert backend.round_trips == 2
    assert await _count(redis_client, key_prefix + "k") == 22


async def test_the_middleware_decides_leased_hits_without_waiting_for_redis(
    redis_client: Redis, key_prefix: str
) -> None:
    backend = backend_on(redis_client, key_prefix, lease_divisor=100)
    async with client_for(limited_app(backend, "1000/15minutes")) as client:  # shares of 10
        responses = [await client.get("/x") for _ in range(33)]
    assert [r.status_code for r in responses] == [200] * 33
    assert [r.headers["ratelimit"] for r in responses] == [f'"1000-in-15min";r={999 - i};t=900' for i in range(33)]
    assert backend.round_trips == 3
    # A set: SCAN may return a key twice while other tests grow the keyspace (Redis rehashing).
    [key] = {key async for key in redis_client.scan_iter(match=key_prefix + "*")}
    assert key.endswith(b"|203.0.113.7")
    assert int(await redis_client.hget(key, "c")) == 33


async def test_leased_shares_never_admit_more_than_the_shared_budget(redis_client: Redis, key_prefix: str) -> None:
    other_client = new_redis()
    try:
        backends = [
            backend_on(redis_client, key_prefix, lease_divisor=64),
            backend_on(other_client, key_prefix, lease_divisor=64),
        ]
        policy = parse_policy("640/15minutes")  # shares of 10
        decisions = await asyncio.gather(*(backends[i % 2].hit("k", policy) for i in range(800)))
        decisions += [await backends[i % 2].hit("k", policy) for i in range(100)]
    finally:
        await other_client.aclose()
    allowed = sum(d.allowed for d in decisions)
    # Never past the limit; at most one unspent share per process lost.
    assert 640 - 2 * 10 <= allowed <= 640
    assert await _count(redis_client, key_prefix + "k") == 640
    assert all(d.remaining == 0 for d in decisions if not d.allowed)
    assert sum(b.round_trips for b in backends) < 900 // 5


async def test_a_lease_ends_with_its_window(redis_client: Redis, key_prefix: str) -> None:
    clock = FakeClock(1000.0)
    backend = backend_on(redis_client, key_prefix, clock=clock)
    policy = parse_policy("10240/15minutes")
    await backend.hit("k", policy)
    assert backend.hit_nowait("k", policy) is not None
    clock.advance(900)  # this process's clock says the window is over
    backend.clock_offset_ms = 900_000  # and so does Redis's
    assert backend.hit_nowait("k", policy) is None
    decision = await backend.hit("k", policy)
    assert backend.round_trips == 2
    assert decision.remaining == 10239  # a fresh window, counted in Redis
    assert await _count(redis_client, key_prefix + "k") == 11


async def test_small_budgets_and_a_zero_divisor_count_every_hit_in_redis(redis_client: Redis, key_prefix: str) -> None:
    exact = backend_on(redis_client, key_prefix)
    for _ in range(5):
        await exact.hit("small", parse_policy("1000/15minutes"))  # under the divisor: no share
    off = backend_on(redis_client, key_prefix, lease_divisor=0)
    for _ in range(5):
        await off.hit("large", parse_policy("1000000/15minutes"))
    assert (exact.round_trips, off.round_trips) == (5, 5)
    assert await _count(redis_client, key_prefix + "small") == 5
    assert await _count(redis_client, key_prefix + "large") == 5


async def test_a_live_share_is_topped_up_not_replaced(redis_client: Redis, key_prefix: str) -> None:
    backend = backend_on(redis_client, key_prefix)
    policy = parse_policy("10240/15minutes")  # shares of 10
    await backend.hit("k", policy)
    # A second call for the key while the first share is live (hits that queued during a call).
    waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    await backend._send([("k", policy, [waiter])])
    assert waiter.result().allowed
    local = 0
    while backend.hit_nowait("k", policy) is not None:
        local += 1
    assert local == 20  # both shares, none dropped
    assert await _count(redis_client, key_prefix + "k") == 22


async def test_remaining_stays_exact_when_a_share_is_topped_up(redis_client: Redis, key_prefix: str) -> None:
    policy = parse_policy("2048/15minutes")  # shares of 2
    others = backend_on(redis_client, key_prefix, lease_divisor=0)
    await asyncio.gather(*(others.hit("k", policy) for _ in range(2040)))  # other instances' hits
    backend = backend_on(redis_client, key_prefix)
    first = asyncio.ensure_future(backend.hit("k", policy))
    await asyncio.sleep(0)  # the first call is in flight; the second hit waits for the next one
    second = asyncio.ensure_future(backend.hit("k", policy))
    decisions = [await first, await second]
    while (decision := backend.hit_nowait("k", policy)) is not None:
        decisions.append(decision)
    # The second waiter's count in Redis includes the first share's two unspent hits; the
    # local hits count from the key's count without any unspent share (2046 - 4), down to the
    # exact figure once every hit is spent. Never negative, never past the limit.
    assert [d.remaining for d in decisions] == [7, 4, 5, 4, 3, 2]
    assert await _count(redis_client, key_prefix + "k") == 2046


async def test_a_share_ends_no_later_than_its_redis_window(redis_client: Redis, key_prefix: str) -> None:
    clock = FakeClock(1000.0)
    backend = backend_on(redis_client, key_prefix, clock=clock)
    evaluate = backend._evaluate

    async def slow(batch: Any) -> Any:
        replies = await evaluate(batch)
        clock.advance(0.5)  # the reply takes half a second to arrive
        return replies

    backend._evaluate = slow  # type: ignore[method-assign]
    policy = parse_policy("10240/15minutes")
    await backend.hit("k", policy)
    clock.now = 1000.0 + 899.9
    assert backend.hit_nowait("k", policy) is not None
    # Redis's window (900 s from when it ran the script) is over: no hit from the old share,
    # while other processes may be spending the new window's whole budget.
    clock.now = 1000.0 + 900.1
    assert backend.hit_nowait("k", policy) is None


async def test_the_lease_table_is_bounded_and_swept_at_most_once_a_second(
    redis_client: Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_module, "MAX_LEASES", 2)
    clock = FakeClock(1000.0)
    backend = backend_on(redis_client, key_prefix, clock=clock)
    policy = parse_policy("10240/15minutes")
    for key in ("a", "b", "c", "c", "c"):  # full of live shares at "c": swept once, no room
        await backend.hit(key, policy)
    assert backend.hit_nowait("a", policy) is not None
    assert backend.hit_nowait("c", policy) is None
    # "c" is counted in Redis hit by hit: no share asked for that could not be kept.
    assert await _count(redis_client, key_prefix + "c") == 3
    table = backend._leases
    for key in ("d", "e", "f"):
        await backend.hit(key, policy)
    assert backend._leases is table  # no pass over the table per new key
    assert set(table) == {"a", "b"}
    clock.advance(901)  # a's and b's shares end with their window
    await backend.hit("g", policy)
    assert set(backend._leases) == {"g"}
    assert backend.hit_nowait("g", policy) is not None
