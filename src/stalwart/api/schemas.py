"""Request and response models. Requests are strict: unknown fields are refused, every
string is bounded, control characters are refused in plain-text fields."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, EmailStr, Field, StringConstraints, field_validator

__all__ = [
    "AccountCreate",
    "AccountOut",
    "AdminAccountOut",
    "ListPage",
    "MeUpdate",
    "NoteCreate",
    "NoteOut",
    "NoteUpdate",
    "TokenCreate",
    "TokenOut",
    "has_body_control_characters",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _no_control(value: object) -> object:
    if isinstance(value, str) and _CONTROL.search(value):
        raise ValueError("control characters are not allowed")
    return value


def has_body_control_characters(value: str) -> bool:
    """Control characters a note body may not hold (tab and line breaks are fine)."""
    return _CONTROL_MULTILINE.search(value) is not None


def _no_control_multiline(value: object) -> object:
    if isinstance(value, str) and has_body_control_characters(value):
        raise ValueError("control characters are not allowed")
    return value


# The constraints must come first, straight on `str`: behind a validator pydantic applies them
# as generic checks (length before the strip, so "   " passed as "", and "items" in the
# message). Control characters are checked on the input as sent, before the strip.
Title = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), BeforeValidator(_no_control)
]
DisplayName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), BeforeValidator(_no_control)
]
Tag = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, min_length=1, max_length=50,
        pattern=r"^[\w][\w .:+#-]*$",
    ),
]
BODY_MAX_LENGTH = 100_000
Body = Annotated[str, StringConstraints(max_length=BODY_MAX_LENGTH), BeforeValidator(_no_control_multiline)]
Password = Annotated[str, StringConstraints(min_length=12, max_length=128)]
Email = Annotated[EmailStr, StringConstraints(max_length=254)]


def _has_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _valid_unicode(cls, value: object) -> object:
        # JSON may escape an unpaired surrogate ("\ud800"): Python decodes it to a str that no
        # database driver can encode (a 500 at the write). Checked on every field before its
        # type, so no field depends on its own constraints happening to refuse it.
        if _has_surrogate(value):
            raise ValueError("unpaired surrogates (U+D800 to U+DFFF) are not allowed")
        return value


class AccountCreate(_Strict):
    email: Email
    password: Password
    display_name: DisplayName


class AccountOut(BaseModel):
    id: str
    email: str
    display_name: str
    role: Literal["user", "admin"]
    created_at: datetime


class AdminAccountOut(AccountOut):
    last_login_at: datetime | None


# PATCH bodies: a field that is absent or null is left as it is (the OpenAPI schema lets each
# of them be null), so `{"title": null}` changes nothing, exactly like `{}`.
_UNCHANGED = "Absent or null: left as it is."


class MeUpdate(_Strict):
    email: Email | None = Field(default=None, description=_UNCHANGED)
    display_name: DisplayName | None = Field(default=None, description=_UNCHANGED)
    password: Password | None = Field(default=None, description=_UNCHANGED)
    current_password: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        default=None, description="Required to change email or password."
    )


class TokenCreate(_Strict):
    email: Email
    password: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class TokenOut(BaseModel):
    token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the scheme name, not a secret
    expires_at: datetime


class NoteCreate(_Strict):
    title: Title
    body: Body = ""
    tags: Annotated[list[Tag], Field(max_length=20)] = []


class NoteUpdate(_Strict):
    title: Title | None = Field(default=None, description=_UNCHANGED)
    body: Body | None = Field(default=None, description=_UNCHANGED)
    tags: Annotated[list[Tag], Field(max_length=20)] | None = Field(
        default=None, description=f"{_UNCHANGED} An empty list removes every tag."
    )


class NoteOut(BaseModel):
    id: str
    title: str
    body: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    version: int


T = TypeVar("T")


class ListPage(BaseModel, Generic[T]):
    """The one list shape: `data` holds the page, `next` the URL of the next page or null."""

    data: list[T]
    next: str | None
