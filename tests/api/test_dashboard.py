"""The dashboard's static files (src/stalwart/api/dashboard.py, src/stalwart/static/monitor/)."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_page_and_assets_are_self_hosted_files_without_inline_code(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/monitor")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources == ["data:,", "/monitor/assets/monitor.css", "/monitor/assets/monitor.js"]
    assert re.search(r"<script>|<style|\sstyle=|\son[a-z]+=|javascript:", page.text) is None
    js = await client.get("/monitor/assets/monitor.js")
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "/api/monitor" in js.text
    assert "sessionStorage" in js.text
    assert "http://" not in js.text
    assert "https://" not in js.text
    css = await client.get("/monitor/assets/monitor.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert "@import" not in css.text
    assert "url(" not in css.text


async def test_assets_revalidate_with_etag(client: httpx.AsyncClient) -> None:
    first = await client.get("/monitor/assets/monitor.js")
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    again = await client.get("/monitor/assets/monitor.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    other = await client.get("/monitor/assets/monitor.js", headers={"If-None-Match": '"x"'})
    assert other.status_code == 200


async def test_unknown_asset_is_a_404_problem(client: httpx.AsyncClient) -> None:
    r = await client.get("/monitor/assets/../../settings.py")
    assert r.status_code == 404
    r = await client.get("/monitor/assets/secret.txt")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("path", ["/monitor", "/monitor/assets/monitor.js", "/monitor/assets/monitor.css"])
async def test_a_304_carries_the_fields_of_its_200(client: httpx.AsyncClient, path: str) -> None:
    # A cache updates the stored page with a 304's fields: a 304 with the CSP of a JSON
    # document (default-src 'none') would block the dashboard's own script on the next load.
    first = await client.get(path)
    again = await client.get(path, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    for name in ("content-type", "content-security-policy", "x-frame-options", "etag", "cache-control"):
        assert again.headers.get(name) == first.headers.get(name), name

    def vary(response: httpx.Response) -> set[str]:
        return {token.strip().lower() for token in response.headers.get("vary", "").split(",")}

    assert vary(again) == vary(first)
