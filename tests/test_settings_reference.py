"""docs/configuration.md documents every setting (it is generated from the model)."""

from __future__ import annotations

from pathlib import Path

from stalwart.settings import Settings
from stalwart.settings_reference import render_reference

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_every_setting_is_in_the_reference() -> None:
    text = render_reference()
    for name in Settings.model_fields:
        assert f"`STALWART_{name.upper()}`" in text


def test_reference_document_is_up_to_date() -> None:
    assert DOC.read_text() == render_reference(), (
        "docs/configuration.md is stale: run `stalwart config-reference > docs/configuration.md`"
    )
