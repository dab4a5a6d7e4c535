"""OWASP API2 (broken authentication): bad, expired and revoked tokens; hash-only token
lookup; login timing; login rate limits per IP and per account."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from stalwart.credentials import TOKEN_PREFIX, Passwords, hash_token
from stalwart.data.models import Token
from stalwart.data.reads import TOKEN_LOOKUP
from stalwart.data.types import utcnow
from tests.conftest import Account, make_settings, signup
from tests.security.helpers import audit_events, client_at, problem_sans_ids, running_app, sha256

pytestmark = pytest.mark.anyio

CHALLENGE = 'Bearer realm="stalwart"'
INVALID = {
    "type": "/problems/unauthorized",
    "title": "Unauthorized",
    "status": 401,
    "detail": "The bearer token is invalid, expired or revoked.",
}
MISSING = {**INVALID, "detail": "A bearer token is required."}


def _assert_401(r: httpx.Response, expected: dict[str, Any] = INVALID) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == CHALLENGE
    assert r.headers["content-type"] == "application/problem+json"
    assert problem_sans_ids(r) == expected


class CountingHasher:
    """Stands in for argon2's PasswordHasher (whose methods cannot be patched): records the
    hash each verification runs against."""

    def __init__(self, verify: Callable[[str, str], bool]) -> None:
        self._verify = verify
        self.calls: list[str] = []

    def verify(self, hash_: str, password: str) -> bool:
        self.calls.append(hash_)
        return self._verify(hash_, password)


def _flip_last(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


async def test_missing_and_malformed_credentials_are_401_with_a_challenge(
    client: httpx.AsyncClient,
) -> None:
    for headers in ({}, {"Authorization": ""}, {"Authorization": "Bearer"},
                    {"Authorization": "Basic YWxpY2U6c2VjcmV0"}, {"Authorization": "Token abc"},
                    {"Cookie": "token=abc"}, {"X-API-Key": "abc"}):
        _assert_401(await client.get("/api/v1/me", headers=headers), MISSING)


async def test_bad_tokens_are_401_and_identical(client: httpx.AsyncClient, alice: Account) -> None:
    bad = [
        "garbage",
        TOKEN_PREFIX,
        TOKEN_PREFIX + "x" * 43,
        _flip_last(alice.token),       # differs in the last character only
        "X" + alice.token[1:],        # ... or the first
        alice.token[:-1],              # a prefix of the real token
        alice.token + "A",             # the real token plus one character
        alice.token.upper(),
        hash_token(alice.token),       # the stored digest is not a credential
        "' OR '1'='1",
        "A" * 5_000,                   # over the length bound: refused before hashing
    ]
    bodies = []
    for token in bad:
        r = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        _assert_401(r)
        bodies.append((problem_sans_ids(r), r.headers["content-length"]))
    assert all(b == bodies[0] for b in bodies)
    assert (await client.get("/api/v1/me", headers=alice.headers)).status_code == 200


async def test_token_lookup_is_by_sha256_digest_only(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The presented token never meets a stored value in Python: its SHA-256 is the key of an
    indexed equality in SQL, so timing cannot reveal how many leading characters matched."""
    reads = app.state.resources.db.reads
    seen: list[str] = []
    original = reads.principal

    async def spy(token_hash: str) -> Any:
        seen.append(token_hash)
        return await original(token_hash)

    monkeypatch.setattr(reads, "principal", spy)
    near_miss = _flip_last(alice.token)
    assert (await client.get("/api/v1/me", headers=alice.headers)).status_code == 200
    _assert_401(await client.get("/api/v1/me", headers={"Authorization": f"Bearer {near_miss}"}))
    assert seen == [sha256(alice.token), sha256(near_miss)]
    # The statement compares digests with a bound parameter (no string building, no prefix).
    sql = str(TOKEN_LOOKUP)
    assert "tokens.token_hash = :token_hash" in sql
    assert "LIKE" not in sql.upper()
    # Only the digest is stored; the token appears nowhere in the table.
    async with app.state.resources.db.session() as session:
        rows = (await session.scalars(select(Token).where(Token.account_id == alice.id))).all()
    assert [row.token_hash for row in rows] == [sha256(alice.token)]
    assert all(alice.token not in str(vars(row)) for row in rows)
    assert alice.token.startswith(TOKEN_PREFIX)
    assert len(alice.token) >= len(TOKEN_PREFIX) + 43  # 256 bits of randomness


async def test_expired_token_is_401(client: httpx.AsyncClient, app: FastAPI, alice: Account) -> None:
    assert (await client.get("/api/v1/me", headers=alice.headers)).status_code == 200
    async with app.state.resources.db.session() as session:
        await session.execute(
            update(Token)
            .where(Token.token_hash == sha256(alice.token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    for path in ("/api/v1/me", "/api/v1/notes", "/api/v1/me/export"):
        _assert_401(await client.get(path, headers=alice.headers))
    _assert_401(await client.post("/api/v1/notes", json={"title": "x"}, headers=alice.headers))


async def test_revoked_token_is_401_at_once_and_other_sessions_survive(
    client: httpx.AsyncClient, app: FastAPI, alice: Account
) -> None:
    r = await client.post(
        "/api/v1/auth/tokens", json={"email": alice.email, "password": alice.password}
    )
    other = r.json()["token"]
    assert (await client.get("/api/v1/notes", headers=alice.headers)).status_code == 200
    r = await client.delete("/api/v1/auth/tokens/current", headers=alice.headers)
    assert r.status_code == 204
    _assert_401(await client.get("/api/v1/notes", headers=alice.headers))
    _assert_401(await client.delete("/api/v1/auth/tokens/current", headers=alice.headers))
    async with app.state.resources.db.session() as session:
        revoked = await session.scalar(
            select(Token.revoked_at).where(Token.token_hash == sha256(alice.token))
        )
    assert revoked is not None
    assert (
        await client.get("/api/v1/me", headers={"Authorization": f"Bearer {other}"})
    ).status_code == 200


async def test_erased_account_tokens_stop_working(client: httpx.AsyncClient) -> None:
    carol = await signup(client, "carol")
    r = await client.request(
        "DELETE", "/api/v1/me", json={"current_password": carol.password}, headers=carol.headers
    )
    assert r.status_code == 204
    _assert_401(await client.get("/api/v1/me", headers=carol.headers))


async def test_wrong_password_and_unknown_email_cost_one_argon2_verify_each(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwords: Passwords = app.state.resources.passwords
    hasher = CountingHasher(passwords.hasher.verify)
    calls = hasher.calls
    monkeypatch.setattr(passwords, "hasher", hasher)
    wrong = await client.post(
        "/api/v1/auth/tokens", json={"email": alice.email, "password": "wrong-password-123"}
    )
    unknown = await client.post(
        "/api/v1/auth/tokens",
        json={"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": alice.password},
    )
    for r in (wrong, unknown):
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
    # Same answer: the response does not tell which of the two was wrong.
    assert problem_sans_ids(wrong) == problem_sans_ids(unknown)
    assert problem_sans_ids(wrong)["detail"] == "The email or password is wrong."
    # One argon2id verification each; the unknown email against the dummy hash.
    assert len(calls) == 2
    assert calls[1] == passwords.dummy_hash
    assert calls[0] != passwords.dummy_hash
    assert calls[0].startswith("$argon2id$")
    assert calls[1].startswith("$argon2id$")
    assert await audit_events(app, "auth.login_failed") == 2


async def test_verify_without_a_hash_runs_argon2_and_never_succeeds(tmp_path: Path) -> None:
    passwords = Passwords(make_settings(tmp_path))
    # Even if the dummy hash matched, a missing account is no login.
    hasher = CountingHasher(lambda hash_, password: True)
    calls = hasher.calls
    passwords.hasher = hasher  # type: ignore[assignment]
    assert await passwords.verify(None, "whatever-password") is False
    assert calls == [passwords.dummy_hash]
    assert await passwords.verify("$argon2id$real", "x") is True
    assert calls[-1] == "$argon2id$real"


async def test_login_is_limited_per_ip(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(
        tmp_path, database_url=database_url, rate_limit_login="3/15minutes",
        rate_limit_login_account="100/15minutes",
    )
    async with running_app(settings) as app, client_at(app, "198.51.100.10") as attacker, \
            client_at(app, "198.51.100.20") as bystander:
        victim = await signup(bystander, "victim")
        # The signup logged in once from the bystander's address; the attacker has 3 tries.
        for _ in range(3):
            r = await attacker.post(
                "/api/v1/auth/tokens", json={"email": victim.email, "password": "guess-guess-1"}
            )
            assert r.status_code == 401
        for password in ("guess-guess-2", victim.password):  # even the right one is refused
            r = await attacker.post(
                "/api/v1/auth/tokens", json={"email": victim.email, "password": password}
            )
            assert r.status_code == 429, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == "/problems/quota-exceeded"
            assert r.json()["violated-policies"] == ["3-in-15min"]
            assert int(r.headers["retry-after"]) > 0
        assert await audit_events(app, "auth.login_failed") == 3
        # Other routes keep the (separate, larger) global budget; other addresses log in.
        assert (await attacker.get("/health/live")).status_code == 200
        assert (await attacker.get("/api/v1/me", headers=victim.headers)).status_code == 200
        r = await bystander.post(
            "/api/v1/auth/tokens", json={"email": victim.email, "password": victim.password}
        )
        assert r.status_code == 201


async def test_login_is_limited_per_account_across_ips(
    tmp_path: Path, database_url: str
) -> None:
    """Password guessing spread over many addresses still meets the account's budget."""
    settings = make_settings(
        tmp_path, database_url=database_url, rate_limit_login="100/15minutes",
        rate_limit_login_account="3/15minutes",
    )
    async with running_app(settings) as app:
        async with client_at(app, "192.0.2.1") as first:
            victim = await signup(first, "victim")  # one login (with the right password)
        statuses = []
        for i in range(4):
            async with client_at(app, f"198.51.100.{i + 1}") as attacker:
                r = await attacker.post(
                    "/api/v1/auth/tokens",
                    json={"email": victim.email.upper(), "password": f"guess-guess-{i}"},
                )
                statuses.append(r.status_code)
        assert statuses == [401, 401, 429, 429]
        assert r.json()["type"] == "/problems/quota-exceeded"
        assert r.json()["violated-policies"] == ["3-in-15min"]
        assert int(r.headers["retry-after"]) > 0
        # Once spent, even the right password is refused: guessing cannot succeed meanwhile.
        async with client_at(app, "198.51.100.77") as late:
            r = await late.post("/api/v1/auth/tokens", json={"email": victim.email, "password": victim.password})
            assert r.status_code == 429
            assert (await late.get("/api/v1/me", headers=victim.headers)).status_code == 200
        assert await audit_events(app, "auth.login_failed") == 2
        # Another account is not affected.
        async with client_at(app, "198.51.100.9") as c:
            other = await signup(c, "other")
            assert other.token


async def test_monitor_token_is_compared_in_constant_time(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one secret compared in Python (it is not stored in the database) goes through
    hmac.compare_digest; a near miss is the same 401 as garbage."""
    import hmac

    from stalwart.api import monitor

    token = f"monitor-{uuid.uuid4().hex}"
    compared: list[tuple[bytes, bytes]] = []

    class SpyHmac:
        @staticmethod
        def compare_digest(a: bytes, b: bytes) -> bool:
            compared.append((a, b))
            return hmac.compare_digest(a, b)

    monkeypatch.setattr(monitor, "hmac", SpyHmac)
    settings = make_settings(tmp_path, database_url=database_url, monitor_token=token)
    async with running_app(settings) as app, client_at(app) as client:
        ok = await client.get("/api/monitor", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        misses = [
            await client.get("/api/monitor", headers={"Authorization": f"Bearer {candidate}"})
            for candidate in (_flip_last(token), token[:-1], "x")
        ]
    for r in misses:
        _assert_401(r)
    assert len({str(problem_sans_ids(r)) for r in misses}) == 1
    assert compared == [(t.encode(), token.encode()) for t in (token, _flip_last(token), token[:-1], "x")]
