"""The configuration reference (docs/configuration.md), rendered from the Settings model so
that the document cannot drift from the code.

Each row's meaning is the field's description, its docstring in `stalwart/settings.py`;
`tests/test_settings_reference.py` fails for a field without one.
"""

from __future__ import annotations

import types
from enum import Enum
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from stalwart.settings import Settings

__all__ = ["render_reference", "undocumented_fields"]

_HEADER = """# Configuration reference

Every setting is read from an environment variable (or a `.env` file in the working
directory) into one object, `stalwart.settings.Settings`; nothing else reads the environment.
Lists are comma-separated. With `STALWART_ENV=production`, `stalwart check-config` and start-up
refuse an unsafe combination (see `production_problems` in `src/stalwart/settings.py`).

"unset" means the variable is not set at all: that selects the behaviour the meaning column
gives. An empty value counts as unset for paths, the monitor token and the backup key; for
other settings it is the value the meaning column describes as empty.

This file is generated: `stalwart config-reference > docs/configuration.md`
(`tests/test_settings_reference.py` fails when it is out of date).

| variable | type | default | meaning |
| --- | --- | --- | --- |
"""

_UNIONS = (Union, types.UnionType)


def _cell(text: str) -> str:
    """One table cell: a single line, with `|` escaped (GFM splits cells on it, even in code)."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(value: str) -> str:
    return f"`{value}`"


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(_code(str(arg)) for arg in args)
    if origin in _UNIONS:
        present = [arg for arg in args if arg is not type(None)]
        text = (
            "IP network"
            if set(present) == {IPv4Network, IPv6Network}
            else " or ".join(_type_name(arg) for arg in present)
        )
        return f"{text}, optional" if len(present) < len(args) else text
    if origin is list:
        return "list of " + " or ".join(_type_name(arg) for arg in args)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(_code(str(member.value)) for member in annotation)
    if annotation is SecretStr:
        return "secret str"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", None) or str(annotation)


def _bounds(field: FieldInfo) -> str:
    """The field's numeric constraints (annotated-types `Ge`, `Gt`, ...), as ` (≥ 1, ≤ 128)`."""
    parts = [
        f"{sign} {getattr(item, attr)}"
        for item in field.metadata
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
        if getattr(item, attr, None) is not None
    ]
    return f" ({', '.join(parts)})" if parts else ""


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list):
        return ",".join(_value(item) for item in value)
    return str(value)


def _default(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        return "(secret)" if value.get_secret_value() else "(empty)"
    if value == "" or value == []:
        return "(empty)"
    return _code(_value(value))


def undocumented_fields(model: type[BaseModel] = Settings) -> list[str]:
    """The fields of `model` without a description (a docstring), as their variable names."""
    return [
        f"STALWART_{name.upper()}"
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]


def render_reference(model: type[BaseModel] = Settings) -> str:
    # Field defaults, not Settings(): the environment of whoever renders must not leak in.
    rows = []
    for name, field in model.model_fields.items():
        cells = (
            _code(f"STALWART_{name.upper()}"),
            _type_name(field.annotation) + _bounds(field),
            _default(field.get_default(call_default_factory=True)),
            field.description or "",
        )
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return _HEADER + "\n".join(rows) + "\n"
