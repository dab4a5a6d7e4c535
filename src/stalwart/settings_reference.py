"""The configuration reference (docs/configuration.md), rendered from the Settings model so
that the document cannot drift from the code."""

from __future__ import annotations

from pydantic import SecretStr

from stalwart.settings import Settings

__all__ = ["render_reference"]

_HEADER = """# Configuration reference

Every setting is read from an environment variable (or a `.env` file in the working
directory) into one object, `stalwart.settings.Settings`; nothing else reads the environment.
Lists are comma-separated. With `STALWART_ENV=production`, `stalwart check-config` and start-up
refuse an unsafe combination (see `production_problems` in `src/stalwart/settings.py`).

This file is generated: `stalwart config-reference > docs/configuration.md`
(`tests/test_settings_reference.py` fails when it is out of date).

| variable | type | default |
| --- | --- | --- |
"""


def _type_name(annotation: object) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("pathlib.", "").replace("ipaddress.", "")


def _default(value: object) -> str:
    if isinstance(value, SecretStr):
        return "(secret)" if value.get_secret_value() else "(empty)"
    if value is None or value == "" or value == []:
        return "(empty)"
    return f"`{value}`"


def render_reference() -> str:
    # Field defaults, not Settings(): the environment of whoever renders must not leak in.
    rows = []
    for name, field in Settings.model_fields.items():
        type_name = _type_name(field.annotation).replace("|", "or")
        default = _default(field.get_default(call_default_factory=True))
        rows.append(f"| `STALWART_{name.upper()}` | {type_name} | {default} |")
    return _HEADER + "\n".join(rows) + "\n"
