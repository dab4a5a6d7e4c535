"""Three `stalwart serve` instances behind nginx: one service, whichever instance answers.

The instances share one PostgreSQL database (created for this module) and one Redis (key
prefixes unique to this run); nginx runs deploy/nginx.conf rendered for loopback
(tests/e2e/loadbalancer.py) with TLS from a throwaway CA. Each test talks HTTPS to nginx
with its own X-Forwarded-For addresses, so the rate-limit budgets of the tests never meet.

Proved here: the rate limit is one budget for the whole service, not one per instance; a
token and the notes cache work across instances, and a revocation on one instance is seen
by the others at once; a rolling restart (out of nginx, SIGTERM, drain with /health at 503,
exit 0, start again, back in, one at a time) under load loses no request, writes included;
an instance stopped with SIGTERM and then one killed with SIGKILL are taken out by nginx,
their requests retried on the live instance, none failing (but one in flight on the killed
process, which no proxy can save once its headers are out).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import REDIS_URL, PostgresDatabase, _pg_available, require_service
from tests.e2e.loadbalancer import NGINX, Nginx
from tests.e2e.serving import ServerProcess, free_port, tls_files

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("multi_instance")]

INSTANCES = 3
# Above the upstream keepalive_timeout rendered into nginx.conf (see deploy/nginx.conf: the
# drain must outlast nginx's idle pooled connections).
DRAIN_SECONDS = 2.0
UPSTREAM_KEEPALIVE = "1s"
# deploy/nginx.conf says 5 s; shorter here only so that a restarted instance is probed
# again sooner (the rolling restart waits for it before stopping the next one).
FAIL_TIMEOUT = "2s"


def _redis_available() -> bool:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass
class Cluster:
    db: PostgresDatabase
    prefix: str
    instances: list[ServerProcess]
    nginx: Nginx
    ssl_context: ssl.SSLContext
    monitor_token: str
    token: str = ""  # an account's token, made through nginx at start-up

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{server.port}" for server in self.instances]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.nginx.https_url, verify=self.ssl_context, timeout=15)

    def ensure_running(self) -> None:
        """Start again any instance a previous test stopped."""
        stopped = [s for s in self.instances if s.proc is None or s.proc.poll() is not None]
        with ThreadPoolExecutor(INSTANCES) as pool:
            list(pool.map(lambda server: server.start(timeout=60), stopped))

    def wait_served(self, address: str, since: int, load: Load, timeout: float = 15.0) -> float:
        """Seconds until nginx sends `address` one of the load's requests numbered `since`+."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            served = self.served_by()
            with load.lock:
                recent = [o.rid for o in load.outcomes[since:]]
            if any(served.get(rid) == address for rid in recent):
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"nginx sent {address} nothing for {timeout} s")

    def served_by(self, expect: Iterable[str] = ()) -> dict[str, str]:
        """request id -> the `upstream` field of its nginx access-log line.

        nginx writes a request's line after its response has gone, so a client can have the
        response before the line exists: with `expect`, wait (5 s at most) for those ids.
        """
        wanted = set(expect)
        deadline = time.monotonic() + 5.0
        while True:
            served = {line["request_id"]: line["upstream"] for line in self.nginx.access_log()}
            if wanted <= served.keys() or time.monotonic() > deadline:
                return served
            time.sleep(0.05)


def _delete_keys(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_service(_pg_available(), "PostgreSQL at 127.0.0.1:5432")
    require_service(_redis_available(), "Redis at 127.0.0.1:6379")
    if not Path(NGINX).exists():
        require_service(False, "nginx (Debian package nginx)")
    tmp = tmp_path_factory.mktemp("multi-instance")
    db = PostgresDatabase()
    db.create()
    prefix = f"stalwart-test-{uuid.uuid4().hex}:"
    monitor_token = secrets.token_urlsafe(24)
    env = {
        "STALWART_DATABASE_URL": db.url,
        "STALWART_REDIS_URL": REDIS_URL,
        "STALWART_RATE_LIMIT": "100/15minutes",
        "STALWART_RATE_LIMIT_BACKEND": "redis",
        "STALWART_RATE_LIMIT_FAIL_OPEN": "false",
        "STALWART_RATE_LIMIT_KEY_PREFIX": f"{prefix}rl:",
        "STALWART_CACHE_KEY_PREFIX": f"{prefix}cache:",
        "STALWART_METRICS_KEY_PREFIX": f"{prefix}metrics:",
        "STALWART_METRICS_PUBLISH_SECONDS": "0.5",
        "STALWART_SCHEDULER_LOCK_PREFIX": f"{prefix}lock:",
        "STALWART_PURGE_INTERVAL_HOURS": "0",
        "STALWART_TRUSTED_PROXIES": "127.0.0.1/32",
        "STALWART_SHUTDOWN_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "STALWART_SHUTDOWN_TIMEOUT_SECONDS": "10",
        "STALWART_MONITOR_TOKEN": monitor_token,
    }
    instances = [
        ServerProcess(tmp / f"instance{i}", env=env, port=free_port()) for i in range(INSTANCES)
    ]
    context, certfile, keyfile = tls_files(tmp)
    nginx = Nginx.for_upstreams(
        tmp / "nginx",
        [f"127.0.0.1:{server.port}" for server in instances],
        certfile=certfile,
        keyfile=keyfile,
        upstream_keepalive_timeout=UPSTREAM_KEEPALIVE,
        fail_timeout=FAIL_TIMEOUT,
    )
    try:
        with ThreadPoolExecutor(INSTANCES) as pool:  # start-up is mostly imports: overlap it
            list(pool.map(lambda server: server.start(timeout=60), instances))
        nginx.start()
        result = Cluster(db, prefix, instances, nginx, context, monitor_token)
        result.token = _signup(result, "192.0.2.1")
        yield result
    finally:
        nginx.stop()
        with ThreadPoolExecutor(INSTANCES) as pool:
            list(pool.map(lambda server: server.stop(), instances))
        db.drop()
        _delete_keys(prefix)


def _signup(cluster: Cluster, client_ip: str) -> str:
    """A new account and its token, through nginx; returns the token."""
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    password = f"pw-{uuid.uuid4().hex}"
    headers = {"X-Forwarded-For": client_ip}
    with cluster.client() as c:
        r = c.post(
            "/api/v1/accounts",
            json={"email": email, "password": password, "display_name": "user"},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        r = c.post("/api/v1/auth/tokens", json={"email": email, "password": password}, headers=headers)
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    rid: str  # the X-Request-ID, which nginx logs
    method: str
    result: int | str  # the status, or the client error

    @property
    def ok(self) -> bool:
        return self.result in (200, 201)


@dataclass
class Load:
    """A bounded load generator: `threads` clients looping through nginx until stopped.

    Each request comes from its own X-Forwarded-For address (so no client nears the rate
    limit) and carries a request id that nginx logs, so each outcome can be matched to the
    instance that served it. With `writes`, one request in four creates a note.
    """

    cluster: Cluster
    tag: str
    threads: int = 3
    writes: bool = False
    # A new connection to nginx per request: an nginx reload closes idle client keep-alive
    # connections, and a client that reuses one at that instant must retry (RFC 9112 9.3.1);
    # httpx does not, so the rolling restart, which reloads nginx, does without keep-alive.
    keepalive: bool = True
    max_requests: int = 4000
    outcomes: list[Outcome] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self, worker: int) -> None:
        auth = {"Authorization": f"Bearer {self.cluster.token}"}
        with self.cluster.client() as c:
            n = 0
            while not self._stop.is_set() and n < self.max_requests // self.threads:
                n += 1
                rid = f"{self.tag}-{worker}-{n}"
                headers = {
                    **auth,
                    "X-Request-ID": rid,
                    "X-Forwarded-For": f"10.{worker}.{n // 200}.{n % 200 + 1}",
                }
                if not self.keepalive:
                    headers["Connection"] = "close"
                write = self.writes and n % 4 == 0
                started = time.monotonic()
                outcome: int | str
                try:
                    if write:
                        r = c.post("/api/v1/notes", json={"title": rid}, headers=headers)
                    else:
                        r = c.get("/api/v1/notes?limit=5", headers=headers)
                    outcome = r.status_code
                    if write and r.status_code == 201:
                        with self.lock:
                            self.created.append(rid)
                except httpx.HTTPError as exc:  # a failed request must be counted, not raised
                    outcome = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    self.outcomes.append(
                        Outcome(started, time.monotonic(), rid, "POST" if write else "GET", outcome)
                    )

    def __enter__(self) -> Load:
        for worker in range(self.threads):
            thread = threading.Thread(target=self._run, args=(worker,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=30)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def test_rate_limit_is_one_budget_across_instances(cluster: Cluster) -> None:
    cluster.ensure_running()
    client_ip = "198.51.100.23"
    headers = {"Authorization": f"Bearer {cluster.token}", "X-Forwarded-For": client_ip}
    remaining = []
    with cluster.client() as c:
        for i in range(100):
            r = c.get("/api/v1/notes", headers={**headers, "X-Request-ID": f"budget-{i}"})
            assert r.status_code == 200, (i, r.text)
            remaining.append(r.headers["ratelimit"])
        refused = c.get("/api/v1/notes", headers={**headers, "X-Request-ID": "budget-100"})
        # Port 80 only redirects to HTTPS, keeping the method.
        plain = httpx.get(cluster.nginx.http_url + "/api/v1/notes", timeout=5)

    # One counter for the service: the remaining count falls by one per request, whichever
    # instance served it.
    assert remaining == [f'"100-in-15min";r={99 - i};t=' + h.split(";t=")[1]
                         for i, h in enumerate(remaining)]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) > 0
    assert refused.json()["violated-policies"] == ["100-in-15min"]

    served = cluster.served_by(f"budget-{i}" for i in range(100))
    upstreams = Counter(served[f"budget-{i}"] for i in range(100))
    # Round robin spread the 100 over all three instances (no retries: one address each).
    assert set(upstreams) == set(cluster.addresses), upstreams
    assert all(count >= 20 for count in upstreams.values()), upstreams
    assert served["budget-100"] in cluster.addresses
    print(f"rate limit: 100 x 200 served {sorted(upstreams.values())} by the 3 instances; 101st: 429")

    # Every instance, asked directly for the same client, finds the budget spent.
    for server in cluster.instances:
        r = httpx.get(f"{server.url}/api/v1/notes", headers=headers, timeout=10)
        assert r.status_code == 429, (server.url, r.status_code)
    # Another client is unaffected.
    with cluster.client() as c:
        other = c.get(
            "/api/v1/notes",
            headers={"Authorization": f"Bearer {cluster.token}", "X-Forwarded-For": "198.51.100.24"},
        )
    assert other.status_code == 200
    assert other.headers["ratelimit"].startswith('"100-in-15min";r=99;')

    assert plain.status_code == 308
    assert plain.headers["location"] == "https://127.0.0.1/api/v1/notes"


def test_token_and_cache_work_on_every_instance(cluster: Cluster) -> None:
    cluster.ensure_running()
    client_ip = "198.51.100.42"
    token = _signup(cluster, client_ip)
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": client_ip}
    first, second, third = cluster.instances

    ids = set()
    for server in cluster.instances:
        r = httpx.get(f"{server.url}/api/v1/me", headers=headers, timeout=10)
        assert r.status_code == 200, (server.url, r.text)
        ids.add(r.json()["id"])
    assert len(ids) == 1

    # The shared cache: a write on one instance is seen by the next read on any other, even
    # one that cached the list just before.
    r = httpx.post(f"{first.url}/api/v1/notes", json={"title": "one"}, headers=headers, timeout=10)
    assert r.status_code == 201
    r = httpx.get(f"{second.url}/api/v1/notes", headers=headers, timeout=10)
    assert [n["title"] for n in r.json()["data"]] == ["one"]
    r = httpx.post(f"{third.url}/api/v1/notes", json={"title": "two"}, headers=headers, timeout=10)
    assert r.status_code == 201
    r = httpx.get(f"{second.url}/api/v1/notes", headers=headers, timeout=10)
    assert [n["title"] for n in r.json()["data"]] == ["two", "one"]

    # Revoked on one instance: refused by every instance at once (tokens are never cached).
    r = httpx.delete(f"{third.url}/api/v1/auth/tokens/current", headers=headers, timeout=10)
    assert r.status_code == 204
    for server in cluster.instances:
        r = httpx.get(f"{server.url}/api/v1/me", headers=headers, timeout=10)
        assert r.status_code == 401, server.url

    # Metrics are shared through Redis: any instance reports on all three.
    sharing: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = httpx.get(
            f"{first.url}/api/monitor",
            headers={"Authorization": f"Bearer {cluster.monitor_token}", "X-Forwarded-For": client_ip},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        sharing = r.json()["sharing"]
        if sharing["instances"] == INSTANCES:
            break
        time.sleep(0.2)
    assert sharing == {"mode": "redis", "instances": INSTANCES}



def test_rolling_restart_loses_no_request(cluster: Cluster) -> None:
    cluster.ensure_running()
    restarted_at: dict[str, float] = {}
    back_in: dict[str, float] = {}
    exit_codes = []
    with Load(cluster, "roll", writes=True, keepalive=False) as load:
        load.wait_for(30)
        for index, server in enumerate(cluster.instances):
            address = f"127.0.0.1:{server.port}"
            # Out of the rotation first: otherwise a request can reach the instance's listener
            # backlog at the instant the listener closes and be reset; nginx retries that for
            # a GET but not for a POST, which would come back 502 (see docs/deployment.md).
            cluster.nginx.set_down(address, down=True)
            if index == 0:
                health, served = _during_drain(cluster, server)
                # Draining: not ready (503) for any load balancer that probes, still serving.
                assert health.status_code == 503
                assert health.json()["checks"]["process:shutdown"][0]["status"] == "fail"
                assert served.status_code == 200
                assert served.headers["connection"] == "close"
            else:
                server.signal()  # SIGTERM
            exit_codes.append(server.wait(timeout=30))
            server.start(timeout=60)
            cluster.nginx.set_down(address, down=False)
            restarted_at[address] = time.monotonic()
            # The next instance goes down only once nginx sends this one traffic again.
            back_in[address] = cluster.wait_served(address, since=len(load.outcomes), load=load)
        load.wait_for(len(load.outcomes) + 30)

    assert exit_codes == [0, 0, 0]
    assert load.failures() == []
    methods = Counter(o.method for o in load.outcomes)
    assert methods["POST"] >= 20, methods
    assert methods["GET"] >= 60, methods
    for server in cluster.instances:
        assert "SIGTERM received: readiness is 503, draining for 2.0 s" in server.log()

    # Every write that got its 201 is in the database, once.
    titles = asyncio.run(_note_titles(cluster.db, "roll-"))
    assert sorted(titles) == sorted(load.created)

    print(
        f"rolling restart: {len(load.outcomes)} requests ({methods['POST']} writes), 0 failed; "
        f"back in rotation after {sorted(round(s, 1) for s in back_in.values())} s"
    )
    # Each restarted instance took traffic again, within nginx's fail_timeout (5 s) or so.
    assert set(back_in) == set(cluster.addresses)
    assert all(seconds < 8 for seconds in back_in.values()), back_in


def test_failed_instances_are_taken_out_by_nginx(cluster: Cluster) -> None:
    """SIGTERM one instance, then SIGKILL another, under load through nginx (GETs).

    The drained one: /health fails at once, the listener closes after the drain, nginx's
    connections are refused and retried elsewhere: no request fails. The killed one: nginx
    retries what it can (refused or reset before any byte reached the client) and takes it
    out; only a request whose response headers that instance had already sent when it died
    cannot be saved (nginx had relayed them), so a failure is allowed only for a request in
    flight on the killed instance while it was being killed.
    """
    cluster.ensure_running()
    drained, victim = cluster.instances[2], cluster.instances[1]
    drained_at, victim_at = (f"127.0.0.1:{s.port}" for s in (drained, victim))
    error_log = cluster.nginx.directory / "error.log"
    with Load(cluster, "failover") as load:
        load.wait_for(30)
        # Both in rotation (a previous test may have left one out for fail_timeout).
        for address in (drained_at, victim_at):
            cluster.wait_served(address, since=len(load.outcomes), load=load)
        log_offset = error_log.stat().st_size
        drained.signal()  # SIGTERM
        assert drained.wait(timeout=30) == 0
        load.wait_for(len(load.outcomes) + 60)
        drained_outcomes = len(load.outcomes)
        cluster.wait_served(victim_at, since=len(load.outcomes), load=load)
        killed_at = time.monotonic()
        victim.proc.kill()  # type: ignore[union-attr]
        assert victim.wait(timeout=10) == -9
        # Requests that started between the signal and the process's end may still have been
        # answered by it: "after the kill" counts from its death.
        dead_at = time.monotonic()
        load.wait_for(len(load.outcomes) + 120)

    served = cluster.served_by(o.rid for o in load.outcomes)
    assert [o for o in load.outcomes[:drained_outcomes] if not o.ok] == []
    # SIGKILL is not instant: a request nginx sent to the victim between kill() and the
    # process's end can have had its headers relayed too. "At the kill" is that window.
    in_flight_on_victim = {
        o.rid for o in load.outcomes if o.started < dead_at and o.ended > killed_at
        and served.get(o.rid) == victim_at
    }
    failed = load.failures()
    assert {o.rid for o in failed} <= in_flight_on_victim, failed
    after = [o for o in load.outcomes if o.started > dead_at]
    assert len(after) >= 100, len(after)
    assert [o for o in after if not o.ok] == []

    # Every request after the kill was served by the last instance standing; those nginx
    # first sent to a stopped instance were retried there.
    survivor = f"127.0.0.1:{cluster.instances[0].port}"
    assert [served[o.rid] for o in after if served[o.rid].split(", ")[-1] != survivor] == []
    retried = [o.rid for o in load.outcomes if served[o.rid].startswith(victim_at + ", ")]
    assert retried
    # The dead instance was taken out: only max_fails (2) tries, plus one probe per
    # fail_timeout (2 s), plus what was in flight.
    probes = int((after[-1].ended - killed_at) / 2) + 1
    tried = [o.rid for o in after if victim_at in served[o.rid]]
    assert len(tried) <= 2 + probes + load.threads, (tried, probes)
    with error_log.open() as f:
        f.seek(log_offset)
        errors = f.read()
    assert "upstream server temporarily disabled" in errors
    for address in (drained_at, victim_at):
        assert f'upstream: "http://{address}/api/v1/notes' in errors
    print(
        f"failover: {len(load.outcomes)} requests; SIGTERM: {drained_outcomes} requests, "
        f"0 failed; SIGKILL: {len(after)} requests after it, 0 failed, {len(retried)} retried "
        f"from the dead instance, {len(failed)} lost in flight on it"
    )


def _during_drain(cluster: Cluster, server: ServerProcess) -> tuple[httpx.Response, httpx.Response]:
    """SIGTERM `server`, then at once `GET /health` and `GET /api/v1/notes` on it.

    Both go on connections opened before the signal and are sent together, so they land
    inside the drain even on a loaded machine (no new connection, no wait for each other).
    """
    auth = {"Authorization": f"Bearer {cluster.token}", "X-Forwarded-For": "192.0.2.9"}
    with (
        httpx.Client(base_url=server.url, timeout=5) as probe,
        httpx.Client(base_url=server.url, timeout=5, headers=auth) as api,
        ThreadPoolExecutor(2) as pool,
    ):
        assert probe.get("/health/live").status_code == 200
        assert api.get("/health/live").status_code == 200
        server.signal()  # SIGTERM
        health = pool.submit(probe.get, "/health")
        served = pool.submit(api.get, "/api/v1/notes")
        return health.result(), served.result()


async def _note_titles(db: PostgresDatabase, prefix: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(db.url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch("SELECT title FROM notes WHERE title LIKE $1", prefix + "%")
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    return [row["title"] for row in rows]
