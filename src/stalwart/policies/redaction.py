"""Redaction of secrets from anything that goes into a log line.

Two entry points: `redact` for structured values (mappings, sequences, header pairs) and
`redact_text` for free text (messages, exception messages, formatted stack traces). Keys are
sensitive when their name contains one of `SENSITIVE_WORDS` (so `new_password`,
`access_token`, `x-api-key`, `set-cookie` are all covered). Free text is scanned for
`key=value`, `key: value`, `"key": "value"`, `('key', 'value')`, `Bearer xxx` / `Basic xxx`, and
for the input values pydantic and FastAPI echo in validation errors (`input_value=...`,
`'input': ...`), which may be a password whatever the field is called, for our prefixed bearer
tokens (`stw_...`) wherever they appear, and for the bound parameters SQLAlchemy appends to
its error messages (`[parameters: ...]`) and PostgreSQL's `DETAIL:` lines (the offending row);
email addresses lose their local part.

The access log needs none of this: it never carries headers (except the user agent) nor query
values, so redaction stays off the per-request hot path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = [
    "REDACTED",
    "SENSITIVE_WORDS",
    "is_sensitive_key",
    "redact",
    "redact_mapping",
    "redact_text",
]

REDACTED = "[REDACTED]"

SENSITIVE_WORDS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "token",
    "secret",
    "authorization",
    "cookie",
    "api_key",
    "apikey",
    "api-key",
    "session",
    "credential",
    "private_key",
)

_SENSITIVE_KEY = re.compile("|".join(re.escape(word) for word in SENSITIVE_WORDS), re.IGNORECASE)

# Cheap pre-check: text with none of these substrings cannot hold anything to redact.
_HINT_WORDS = ("bearer", "basic", "input", "stw_", "parameters", "@", "DETAIL:")
_HINT = re.compile(
    "|".join([*(re.escape(word) for word in SENSITIVE_WORDS), *_HINT_WORDS]), re.IGNORECASE
)

_CREDENTIAL_SCHEME = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)

# Our bearer tokens carry a prefix (stalwart.credentials.TOKEN_PREFIX) precisely so they can be
# recognised anywhere, even with no key in front of them.
_PREFIXED_TOKEN = re.compile(r"\bstw_[A-Za-z0-9_\-]{8,}")

# PostgreSQL's DETAIL line quotes the offending row or key: `Failing row contains (...)`.
_PG_DETAIL = re.compile(r"(DETAIL:\s+)[^\n]+")

# Email addresses are personal data: the local part goes, the domain stays for debugging.
_EMAIL = re.compile(r"(?<![\w.+\-])[\w.+\-]+@((?:[A-Za-z0-9\-]+\.)+[A-Za-z]{2,})\b")

# SQLAlchemy error messages end with the statement's bound values (emails, hashes...).
_SQL_PARAMETERS = re.compile(r"\[parameters: [^\n]*")

# pydantic's ValidationError text: `[type=..., input_value=<repr>, input_type=...]`.
_PYDANTIC_INPUT = re.compile(r"input_value=.*?(?=, input_type=)")

# FastAPI's RequestValidationError text and error dicts: `'input': <repr>`.
_INPUT_KEY = re.compile(r"""(["'])input\1\s*:\s*""")

# A key (optionally quoted, possibly a bytes literal), a separator, and a value. The value is a
# quoted string or a bare run up to the next delimiter; a value opening a bracket is not taken,
# so the scan continues inside it and redacts the nested keys one by one.
_PAIR = re.compile(
    r"""
    (?P<key>(?P<q>\\?["']?)(?<![\w.\-])(?P<name>[A-Za-z_][\w.\-]*)(?P=q))
    (?P<sep>\s*[:=]\s*|\s*,\s*(?=b?["']))
    (?P<value>
        b?"(?:[^"\\\n]|\\.)*"
      | b?'(?:[^'\\\n]|\\.)*'
      | \\"(?:[^"\\\n]|\\[^"])*\\"
      | (?:(?:Bearer|Basic)\s+)?[^\s,;&'"(){}\[\]\\][^\s,;&'"(){}\[\]\\]*
    )
    """,
    re.VERBOSE | re.IGNORECASE,
)

# A cookie header holds several pairs (`a=1; b=2`), any of which may be a session: all of it goes.
_COOKIE_HEADER = re.compile(r"\b((?:set-)?cookie\s*:\s*)[^\n'\"]+", re.IGNORECASE)

_CLOSERS = {"{": "}", "[": "]", "(": ")"}


@lru_cache(maxsize=1024)
def is_sensitive_key(key: str) -> bool:
    """True when a key's name says its value is a secret (password, token, cookie...)."""
    return _SENSITIVE_KEY.search(key) is not None


def _end_of_repr(text: str, start: int) -> int:
    """Index just past the Python/JSON literal starting at `start` (best effort, bounded)."""
    i = start
    n = len(text)
    if i < n and text[i] == "b" and i + 1 < n and text[i + 1] in "'\"":
        i += 1
    depth: list[str] = []
    while i < n:
        char = text[i]
        if char in "'\"":
            quote = char
            i += 1
            while i < n and text[i] != quote and text[i] != "\n":
                i += 2 if text[i] == "\\" else 1
            i += 1
            if not depth:
                return min(i, n)
            continue
        if char in _CLOSERS:
            depth.append(_CLOSERS[char])
        elif depth and char == depth[-1]:
            depth.pop()
            if not depth:
                return i + 1
        elif not depth and char in ",})]\n":
            return i
        i += 1
    return n


def _redact_inputs(text: str) -> str:
    parts: list[str] = []
    pos = 0
    for match in _INPUT_KEY.finditer(text):
        if match.start() < pos:
            continue
        end = _end_of_repr(text, match.end())
        parts.append(text[pos : match.end()])
        parts.append(REDACTED)
        pos = end
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)


def _pair(match: re.Match[str]) -> str:
    if is_sensitive_key(match["name"]):
        return match["key"] + match["sep"] + REDACTED
    # Not a secret itself, but a value such as `/login?token=abc` may hold one.
    value = match["value"]
    return match["key"] + match["sep"] + (_redact_pairs(value) if _HINT.search(value) else value)


def _detail(match: re.Match[str]) -> str:
    return match[1] + REDACTED


def _email(match: re.Match[str]) -> str:
    return REDACTED + "@" + match[1]


def _cookie(match: re.Match[str]) -> str:
    return match[1] + REDACTED


def _scheme(match: re.Match[str]) -> str:
    return match[1] + " " + REDACTED


def _redact_pairs(text: str) -> str:
    return _PAIR.sub(_pair, text)


def redact_text(text: str) -> str:
    """`text` with every recognisable secret value replaced by `REDACTED`."""
    if not text or _HINT.search(text) is None:
        return text
    if "DETAIL:" in text:
        text = _PG_DETAIL.sub(_detail, text)
    if "@" in text:
        text = _EMAIL.sub(_email, text)
    if "stw_" in text:
        text = _PREFIXED_TOKEN.sub("stw_" + REDACTED, text)
    if "[parameters: " in text:
        text = _SQL_PARAMETERS.sub("[parameters: " + REDACTED + "]", text)
    if "input" in text:
        text = _PYDANTIC_INPUT.sub("input_value=" + REDACTED, text)
        text = _redact_inputs(text)
    text = _COOKIE_HEADER.sub(_cookie, text)
    # Pairs first, so `Authorization: Bearer x` becomes one marker rather than two.
    text = _redact_pairs(text)
    return _CREDENTIAL_SCHEME.sub(_scheme, text)


def redact_mapping(data: Mapping[Any, Any]) -> dict[Any, Any]:
    """A copy of `data` (recursively) with the values of sensitive keys replaced."""
    out: dict[Any, Any] = {}
    for key, value in data.items():
        name = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if value is not None and is_sensitive_key(name):
            out[key] = REDACTED
        else:
            out[key] = redact(value)
    return out


def redact(value: Any) -> Any:
    """`value` with secrets removed: mappings by key, strings by pattern, recursively."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        # A header pair such as (b"x-api-key", b"...") names its own secret.
        if len(items) == 2 and isinstance(items[0], str | bytes):
            name = items[0].decode("latin-1") if isinstance(items[0], bytes) else items[0]
            if is_sensitive_key(name):
                return [redact(items[0]), REDACTED]
        return [redact(item) for item in items]
    return value
