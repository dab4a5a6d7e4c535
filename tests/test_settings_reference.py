"""docs/configuration.md documents every setting (it is generated from the model)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from stalwart.settings import Settings
from stalwart.settings_reference import render_reference, undocumented_fields

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_every_setting_is_in_the_reference() -> None:
    text = render_reference()
    for name in Settings.model_fields:
        assert f"`STALWART_{name.upper()}`" in text


def test_every_setting_has_a_meaning() -> None:
    # A new setting needs a docstring under it (Settings has use_attribute_docstrings).
    assert undocumented_fields() == [], "give each of these settings a docstring in settings.py"


def test_a_setting_without_a_meaning_is_caught() -> None:
    class Extended(Settings):
        documented: int = 1
        """Something."""
        undocumented: int = 2
        blank: int = Field(default=3, description="  ")

    assert undocumented_fields(Extended) == ["STALWART_UNDOCUMENTED", "STALWART_BLANK"]


def test_each_row_has_its_meaning_and_literal_choices() -> None:
    class Extended(Settings):
        mode: Literal["a|b", "c"] = "c"
        """Pick `a|b` or `c`,
        on two lines."""

    rows = [line for line in render_reference(Extended).splitlines() if "`STALWART_MODE`" in line]
    assert rows == [
        "| `STALWART_MODE` | one of `a\\|b`, `c` | `c` | Pick `a\\|b` or `c`, on two lines. |"
    ]


def test_every_row_has_four_cells() -> None:
    for line in render_reference().splitlines():
        if line.startswith("| `STALWART_"):
            cells = line.replace("\\|", "").split("|")[1:-1]
            assert len(cells) == 4, line
            assert all(cell.strip() for cell in cells), line


def test_reference_document_is_up_to_date() -> None:
    assert DOC.read_text() == render_reference(), (
        "docs/configuration.md is stale: run `stalwart config-reference > docs/configuration.md`"
    )
