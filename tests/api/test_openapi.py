"""The OpenAPI document describes every operation: success schema, problem+json errors, auth."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio

PUBLIC = {("post", "/api/v1/accounts"), ("post", "/api/v1/auth/tokens")}


async def test_every_api_operation_is_documented(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    operations = [
        (method, path, op)
        for path, item in spec["paths"].items()
        if path.startswith("/api/v1/")
        for method, op in item.items()
    ]
    assert len(operations) >= 12
    for method, path, op in operations:
        where = f"{method.upper()} {path}"
        codes = {int(c) for c in op["responses"] if c.isdigit()}
        success = [c for c in codes if c < 300]
        assert success, where
        for code in success:
            if code != 204:
                content = op["responses"][str(code)].get("content", {})
                assert content, f"{where} {code} has no schema"
        errors = [c for c in codes if c >= 400]
        assert 429 in errors, where
        assert 503 in errors, where
        for code in errors:
            content = op["responses"][str(code)]["content"]
            assert list(content) == ["application/problem+json"], f"{where} {code}"
        if (method, path) in PUBLIC:
            assert "security" not in op, where
        else:
            assert op.get("security") == [{"HTTPBearer": []}], where
            assert 401 in errors, where


async def test_docs_page_uses_self_hosted_assets_without_inline_script(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script src="/docs/assets/swagger-ui-bundle.js"></script>' in r.text
    assert "<script>" not in r.text
    assert "cdn" not in r.text.lower()
    js = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200
    assert len(js.content) > 100_000
    # Served as every static asset (policies/static.py): validators and a cache policy, and a
    # revalidation answered with the same fields.
    assert js.headers["cache-control"] == "public, max-age=300"
    again = await client.get("/docs/assets/swagger-ui-bundle.js", headers={"If-None-Match": js.headers["etag"]})
    assert again.status_code == 304
    assert again.headers["etag"] == js.headers["etag"]
    assert again.headers["content-security-policy"] == js.headers["content-security-policy"]
    init = await client.get("/docs/init.js")
    assert init.headers["content-type"].startswith("text/javascript")


# Segments that are not collections: namespaces (api, v1, auth, admin), one resource of the
# caller (me, current, export), an action on a resource (restore), mass nouns (trash, audit).
_SINGLETONS = {"v1", "api", "auth", "admin", "me", "current", "export", "restore", "trash", "audit"}


async def test_paths_and_methods_follow_rest_conventions(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, item in spec["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for segment in path.strip("/").split("/"):
            if segment.startswith("{"):
                continue
            assert segment == segment.lower(), path
            assert segment in _SINGLETONS or segment.endswith("s"), f"{path}: {segment} is not a plural noun"
        for method, op in item.items():
            codes = {int(c) for c in op["responses"] if c.isdigit()}
            if method == "delete":
                assert 204 in codes, f"DELETE {path}"
            if method == "post" and not path.endswith("/restore"):
                assert 201 in codes or 202 in codes, f"POST {path} creates"
            if method == "get":
                assert 200 in codes, f"GET {path}"
