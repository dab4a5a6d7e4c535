"""Dependencies are pinned by lock files, consistent with pyproject, and installed as locked."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)")


def _lock(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{name}: not an exact pin: {line!r}"
        pins[canonicalize_name(match.group(1))] = match.group(3)
    return pins


def _declared(extra: str | None = None) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    items = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {canonicalize_name(Requirement(item).name) for item in items}


def test_every_runtime_dependency_is_pinned_in_the_base_lock() -> None:
    base = _lock("base.lock")
    assert _declared() <= set(base)


def test_every_dev_dependency_is_pinned_in_the_dev_lock() -> None:
    dev = _lock("dev.lock")
    assert _declared() | _declared("dev") <= set(dev)


def test_both_locks_agree_on_shared_packages() -> None:
    base, dev = _lock("base.lock"), _lock("dev.lock")
    assert {name: v for name, v in base.items() if dev.get(name) != v} == {}


def test_the_environment_runs_the_locked_versions() -> None:
    dev = _lock("dev.lock")
    drift = {}
    for name, version in dev.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            drift[name] = "missing"
            continue
        if installed != version:
            drift[name] = installed
    assert drift == {}
