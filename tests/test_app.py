"""app.py: the service's FastAPI app as create_app builds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from stalwart.app import create_app
from tests.conftest import make_settings


@pytest.mark.parametrize("enabled", [False, True])
def test_fastapi_opentelemetry_follows_the_setting(tmp_path: Path, enabled: bool) -> None:
    app = create_app(make_settings(tmp_path, opentelemetry=enabled))
    config = app._telemetry  # FastAPI keeps no public accessor for it
    assert (config["tracing"], config["metrics"], config["logs"]) == (enabled, enabled, enabled)


def test_fastapi_opentelemetry_is_off_by_default(tmp_path: Path) -> None:
    # Off, FastAPI never looks the OpenTelemetry providers up on a request.
    app = create_app(make_settings(tmp_path))
    assert app._native_telemetry.enabled() is False
