"""Secrets removed from log text and structures (src/stalwart/policies/redaction.py)."""

from __future__ import annotations

import time

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from stalwart.policies.redaction import REDACTED, is_sensitive_key, redact, redact_text

R = REDACTED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login password=hunter2 ok", f"login password={R} ok"),
        ('{"email": "a@b.c", "password": "hunter2"}', f'{{"email": "a@b.c", "password": {R}}}'),
        (
            "{'email': 'a@b.c', 'password': 'hunter2', 'x': 1}",
            f"{{'email': 'a@b.c', 'password': {R}, 'x': 1}}",
        ),
        ("Authorization: Bearer abc.def-ghi", f"Authorization: {R}"),
        ("sent Bearer abc123== to upstream", f"sent Bearer {R} to upstream"),
        ("header basic dXNlcjpwdw==", f"header basic {R}"),
        ("GET /api?token=abc123&page=2 HTTP/1.1", f"GET /api?token={R}&page=2 HTTP/1.1"),
        ("url.path=/login?access_token=abc123&x=1", f"url.path=/login?access_token={R}&x=1"),
        ("refresh_token=r1; new_password: 'p w'", f"refresh_token={R}; new_password: {R}"),
        (
            "client_secret='s3' api_key=k1 apikey=k2 X-API-Key: k3",
            f"client_secret={R} api_key={R} apikey={R} X-API-Key: {R}",
        ),
        ("set-cookie: sid=abc; Path=/", f"set-cookie: {R}"),
        ("cookie: session=abc", f"cookie: {R}"),
        ("Cookie: theme=dark; sid=abc\nnext line", f"Cookie: {R}\nnext line"),
        ("Set-Cookie: sid=abc; Path=/; HttpOnly", f"Set-Cookie: {R}"),
        (
            'ValueError: bad {\\"password\\": \\"hunter2\\"}',
            f'ValueError: bad {{\\"password\\": {R}}}',
        ),
        (
            "[(b'host', b'x'), (b'authorization', b'Bearer zz'), (b'x-api-key', b'kk')]",
            f"[(b'host', b'x'), (b'authorization', {R}), (b'x-api-key', {R})]",
        ),
        ("passwd=abc PASSWORD=DEF", f"passwd={R} PASSWORD={R}"),
        ("KeyError: 'stw_AbC-12_xyzLMNOP'", f"KeyError: 'stw_{R}'"),
        (
            "(sqlite3.OperationalError) no such table: accounts\n"
            "[SQL: SELECT id FROM accounts WHERE email = ?]\n"
            "[parameters: ('alice@example.com',)]\n(Background on this error at: x)",
            "(sqlite3.OperationalError) no such table: accounts\n"
            "[SQL: SELECT id FROM accounts WHERE email = ?]\n"
            f"[parameters: {R}]\n(Background on this error at: x)",
        ),
        ("mail to alice.b+x@mail.example.com failed", f"mail to {R}@mail.example.com failed"),
        ("{'email': 'bob@example.org'}", f"{{'email': '{R}@example.org'}}"),
        ("    @router.post('/x')", "    @router.post('/x')"),
        (
            'null value in column "id" violates not-null constraint\n'
            "DETAIL:  Failing row contains (null, Alice Liddell, x).\nnext",
            f'null value in column "id" violates not-null constraint\nDETAIL:  {R}\nnext',
        ),
        ("nothing to see here", "nothing to see here"),
        ("token bucket refilled: 5 left", "token bucket refilled: 5 left"),
        ("", ""),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_pydantic_validation_error_text_loses_its_inputs() -> None:
    class Signup(BaseModel):
        email: str
        secret_answer: str = Field(min_length=30)
        age: int

    with pytest.raises(ValidationError) as info:
        Signup.model_validate({"email": "a@b.c", "secret_answer": "hunter2-value", "age": "x-val"})
    text = redact_text(str(info.value))
    assert "hunter2-value" not in text
    assert "x-val" not in text
    assert f"input_value={R}, input_type=str" in text
    assert "secret_answer" in text  # the location stays, for debugging


def test_fastapi_validation_error_text_loses_its_inputs() -> None:
    error = RequestValidationError(
        [
            {"type": "string_too_short", "loc": ("body", "pw"), "msg": "short", "input": "hunter2"},
            {
                "type": "missing",
                "loc": ("body",),
                "msg": "m",
                "input": {"email": "e", "pw": "hunter3", "n": [1, {"a": "b"}]},
            },
        ]
    )
    text = redact_text(str(error))
    assert "hunter2" not in text
    assert "hunter3" not in text
    assert text.count(f"'input': {R}") == 2
    assert "'msg': 'm'" in text


def test_redact_mapping_recursively() -> None:
    data = {
        "password": "x",
        "Authorization": "Bearer q",
        "nested": {"refresh_token": "r", "ok": 1, "list": [{"api_key": "k"}, "token=t1"]},
        "headers": [(b"authorization", b"Bearer q"), ("X-Api-Key", "k"), ("accept", "json")],
        "query": "page=1&session=abc",
        "absent_secret": None,
        7: "seven",
    }
    assert redact(data) == {
        "password": R,
        "Authorization": R,
        "nested": {"refresh_token": R, "ok": 1, "list": [{"api_key": R}, f"token={R}"]},
        "headers": [["authorization", R], ["X-Api-Key", R], ["accept", "json"]],
        "query": f"page=1&session={R}",
        "absent_secret": None,
        7: "seven",
    }


def test_token_prefix_matches_the_credentials_module() -> None:
    from stalwart.credentials import TOKEN_PREFIX, new_token

    assert TOKEN_PREFIX == "stw_"
    token = new_token()
    assert redact_text(f"oops {token} leaked") == f"oops stw_{R} leaked"


def test_redact_leaves_other_values_alone() -> None:
    assert redact(42) == 42
    assert redact(None) is None
    assert redact("plain") == "plain"


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "new_password",
        "passwd",
        "token",
        "access_token",
        "refresh_token",
        "secret",
        "client_secret",
        "authorization",
        "cookie",
        "set-cookie",
        "api_key",
        "apikey",
        "x-api-key",
        "session",
        "session_id",
        "Credentials",
        "PASSPHRASE",
    ],
)
def test_sensitive_keys(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize("key", ["email", "request.id", "url.path", "account_id", "user_agent"])
def test_ordinary_keys(key: str) -> None:
    assert not is_sensitive_key(key)


def test_redaction_stays_linear_on_huge_text() -> None:
    # Quadratic backtracking on 80 kB would take minutes; linear takes milliseconds.
    text = "A" * 40_000 + " = " + "b" * 40_000 + " token"
    started = time.perf_counter()
    assert redact_text(text) == text
    assert time.perf_counter() - started < 3.0
