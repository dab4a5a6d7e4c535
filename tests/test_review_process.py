"""The review process is written down and kept in step with the tooling that enforces it."""

from __future__ import annotations

import re
from pathlib import Path

from typer.main import get_command

from stalwart.cli import app

ROOT = Path(__file__).resolve().parent.parent


def _items(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("- [ ]")]


def test_pull_request_template_carries_the_whole_checklist() -> None:
    checklist = _items((ROOT / "docs" / "review-checklist.md").read_text())
    template = _items((ROOT / ".github" / "pull_request_template.md").read_text())
    assert len(checklist) >= 12
    assert template == checklist


def test_checklist_has_security_performance_and_documentation_sections() -> None:
    text = (ROOT / "docs" / "review-checklist.md").read_text()
    for heading in ("## Security review", "## Performance review", "## Documentation requirements"):
        assert heading in text


def test_peer_review_rules_and_ci_entry_point_exist() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    assert "nobody merges their own change" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check" in test_recipe
    assert "mypy" in test_recipe
    assert "pytest" in test_recipe


def test_every_cli_command_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    command = get_command(app)
    names = sorted(command.commands)  # type: ignore[attr-defined]
    undocumented = [n for n in names if not re.search(rf"`stalwart {re.escape(n)}\b", readme)]
    assert undocumented == []


def test_every_benchmark_is_reported_in_the_performance_document() -> None:
    performance = (ROOT / "docs" / "performance.md").read_text()
    scripts = [p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("__init__", "common")]
    scripts = [s for s in scripts if not s.endswith("_apps")]
    missing = [s for s in scripts if f"benchmarks/{s}.py" not in performance]
    assert missing == []
