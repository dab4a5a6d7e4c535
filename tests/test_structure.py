"""Consistent code structure, checked: module conventions the guide asks for hold everywhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "stalwart"
MODULES = sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


def test_no_base_http_middleware_anywhere() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in MODULES
        if re.search(r"BaseHTTPMiddleware|@\w+\.middleware\(", p.read_text())
    ]
    assert offenders == []


def test_only_settings_reads_the_environment() -> None:
    pattern = re.compile(r"os\.environ|os\.getenv|getenv\(")
    offenders = [
        str(p.relative_to(ROOT)) for p in MODULES
        if p.name != "settings.py" and pattern.search(p.read_text())
    ]
    assert offenders == []


def test_every_module_declares_its_public_surface() -> None:
    missing = []
    for path in MODULES:
        if path.name in ("__init__.py", "__main__.py"):
            continue
        tree = ast.parse(path.read_text())
        names = {
            target.id
            for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        if "__all__" not in names:
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []


def test_every_policy_module_has_its_own_test_module() -> None:
    untested = []
    for path in sorted((SRC / "policies").glob("*.py")):
        if path.name in ("__init__.py", "timestamps.py", "problem.py"):
            continue
        if not (ROOT / "tests" / "policies" / f"test_{path.stem}.py").exists():
            untested.append(path.name)
    assert untested == []


def test_pure_asgi_middleware_pass_non_http_scopes_through() -> None:
    """Each policy middleware class has an ASGI __call__(scope, receive, send): `async def`, or a
    plain `def` returning the inner app's awaitable (`-> Awaitable[None]`, no frame of its own)."""
    for path in sorted((SRC / "policies").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Middleware"):
                calls = [
                    f for f in node.body
                    if (isinstance(f, ast.AsyncFunctionDef) or (
                        isinstance(f, ast.FunctionDef) and f.returns is not None
                        and ast.unparse(f.returns) == "Awaitable[None]"
                    )) and f.name == "__call__"
                ]
                bases = [ast.unparse(b) for b in node.bases]
                if not calls:  # a subclass of a pure ASGI middleware (Starlette's CORS) is fine
                    assert bases, f"{path.name}:{node.name} has no __call__"
                    continue
                args = [a.arg for a in calls[0].args.args]
                assert args == ["self", "scope", "receive", "send"], f"{path.name}:{node.name}"
