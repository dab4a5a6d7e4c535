"""Request models: what every field refuses, whatever its own constraints."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from stalwart.api.lifecycle_schemas import AccountErase
from stalwart.api.schemas import AccountCreate, MeUpdate, NoteCreate, NoteUpdate, TokenCreate

# One valid payload per request model, with every field present.
VALID: dict[type[BaseModel], dict[str, Any]] = {
    AccountCreate: {"email": "a@example.com", "password": "long enough pw", "display_name": "A"},
    TokenCreate: {"email": "a@example.com", "password": "long enough pw"},
    MeUpdate: {
        "email": "a@example.com", "display_name": "A", "password": "long enough pw",
        "current_password": "long enough pw",
    },
    NoteCreate: {"title": "t", "body": "b", "tags": ["x"]},
    NoteUpdate: {"title": "t", "body": "b", "tags": ["x"]},
    AccountErase: {"current_password": "long enough pw"},
}

TEXT_FIELDS = [
    (model, name) for model, payload in VALID.items() for name, value in payload.items()
    if isinstance(value, (str, list))
]


def _with_surrogate(value: str | list[str]) -> str | list[str]:
    if isinstance(value, list):
        return [*value, "ok\ud800"]
    return value[:1] + "\udfff" + value[1:]  # still an email, long enough, not blank


@pytest.mark.parametrize("model", list(VALID))
def test_every_field_of_every_request_model_is_covered(model: type[BaseModel]) -> None:
    assert set(VALID[model]) == set(model.model_fields)
    model.model_validate(VALID[model])


@pytest.mark.parametrize(
    ("model", "field"), TEXT_FIELDS, ids=[f"{m.__name__}.{f}" for m, f in TEXT_FIELDS]
)
def test_an_unpaired_surrogate_is_refused_in_every_text_field(model: type[BaseModel], field: str) -> None:
    # Python decodes the JSON escape "\ud800" to a str no database driver can encode.
    payload = {**VALID[model], field: _with_surrogate(VALID[model][field])}
    with pytest.raises(ValidationError) as caught:
        model.model_validate(payload)
    assert [(e["loc"], e["type"], e["msg"]) for e in caught.value.errors()] == [
        ((field,), "value_error", "Value error, unpaired surrogates (U+D800 to U+DFFF) are not allowed")
    ]
