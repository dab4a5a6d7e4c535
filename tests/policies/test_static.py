"""Static assets: validators, 304s, cache policy, precompressed variants, ranges, traversal."""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote

import brotli
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.types import Message

from stalwart.policies.compression import CompressionMiddleware
from stalwart.policies.static import (
    PACKAGED_STATIC_DIR,
    StaticAssets,
    build_static,
    content_type_for,
    is_hashed_name,
    mount_static,
    static_directory,
)
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

JS = b"export function hello() { return 'hello, world'; }\n" * 40
SECRET = b"top secret outside the static folder"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "static"
    (root / "sub").mkdir(parents=True)
    (root / "app.js").write_bytes(JS)
    (root / "app.3f2a9c1b.js").write_bytes(JS)
    (root / "logo.png").write_bytes(b"\x89PNG\r\n" + bytes(range(256)) * 4)
    (root / "sub" / "page.html").write_bytes(b"<!doctype html><title>x</title>")
    (root / ".hidden").write_bytes(b"hidden")
    (root / "empty.txt").write_bytes(b"")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(SECRET)
    os.symlink(tmp_path / "secret.txt", root / "link-out")
    os.symlink(tmp_path / "outside", root / "dir-link")
    os.symlink(root / "app.js", root / "link-in.js")
    return root


def make_app(root: Path, **options: int) -> Starlette:
    app = Starlette()
    mount_static(app, root, **options)
    return app


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


async def get(
    app: Starlette | CompressionMiddleware,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        del client.headers["accept-encoding"]
        async with client.stream(method, path, headers=headers or {}) as response:
            response._content = b"".join([chunk async for chunk in response.aiter_raw()])
            return response


async def raw(app: Starlette, raw_path: bytes) -> tuple[int, bytes]:
    """Call the app as uvicorn would for a request line carrying `raw_path` unnormalised."""
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"t")],
        "client": ("127.0.0.1", 1234),
        "server": ("t", 80),
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, body


async def test_file_is_served_with_validators_and_short_cache(site: Path) -> None:
    r = await get(make_app(site), "/static/app.js")
    st = (site / "app.js").stat()
    assert r.status_code == 200
    assert r.content == JS
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["content-length"] == str(len(JS))
    assert r.headers["etag"] == etag_of(JS)
    assert r.headers["last-modified"] == formatdate(st.st_mtime, usegmt=True)
    assert r.headers["cache-control"] == "public, max-age=300"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in r.headers


async def test_hashed_file_name_is_immutable_for_a_year(site: Path) -> None:
    r = await get(make_app(site), "/static/app.3f2a9c1b.js")
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize(
    ("name", "hashed"),
    [
        ("app.3f2a9c1b.js", True),
        ("app-3f2a9c1b.css", True),
        ("vendor.chunk.0123456789abcdef.js", True),
        ("app.js", False),
        ("deadbeef.js", False),  # the whole name, not a hash segment
        ("app.3f2a9.js", False),  # too short
        ("app.3F2A9C1B.js", False),  # hashes here are lowercase hex
        ("app.3f2a9c1g.js", False),
    ],
)
def test_is_hashed_name(name: str, hashed: bool) -> None:
    assert is_hashed_name(name) is hashed


@pytest.mark.parametrize(
    "inm",
    [lambda e: e, lambda e: f'"other", {e}', lambda e: f"W/{e}", lambda e: "*"],
)
async def test_if_none_match_gives_304(site: Path, inm: object) -> None:
    assert callable(inm)
    r = await get(make_app(site), "/static/app.js", {"If-None-Match": inm(etag_of(JS))})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag_of(JS)
    assert r.headers["cache-control"] == "public, max-age=300"
    assert r.headers["vary"] == "Accept-Encoding"


async def test_if_none_match_mismatch_gives_200(site: Path) -> None:
    r = await get(make_app(site), "/static/app.js", {"If-None-Match": '"stale"'})
    assert r.status_code == 200
    assert r.content == JS


async def test_if_modified_since(site: Path) -> None:
    app = make_app(site)
    mtime = (site / "app.js").stat().st_mtime
    r = await get(app, "/static/app.js", {"If-Modified-Since": formatdate(mtime, usegmt=True)})
    assert r.status_code == 304
    r = await get(app, "/static/app.js", {"If-Modified-Since": formatdate(mtime - 60, usegmt=True)})
    assert r.status_code == 200
    # If-None-Match wins over If-Modified-Since.
    r = await get(
        app,
        "/static/app.js",
        {"If-None-Match": '"stale"', "If-Modified-Since": formatdate(mtime, usegmt=True)},
    )
    assert r.status_code == 200


async def test_a_changed_file_gets_a_new_etag(site: Path) -> None:
    app = make_app(site)
    first = await get(app, "/static/app.js")
    new = JS + b"// changed\n"
    (site / "app.js").write_bytes(new)
    os.utime(site / "app.js", (time.time() + 5, time.time() + 5))
    second = await get(app, "/static/app.js")
    assert second.content == new
    assert second.headers["etag"] == etag_of(new) != first.headers["etag"]


async def test_head_sends_headers_only(site: Path) -> None:
    r = await get(make_app(site), "/static/app.js", method="HEAD")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(JS))
    assert r.headers["etag"] == etag_of(JS)
    assert r.content == b""


async def test_other_methods_get_405_problem(site: Path) -> None:
    r = await get(make_app(site), "/static/app.js", method="POST")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"
    assert r.headers["content-type"] == "application/problem+json"


# --- precompressed variants ----------------------------------------------------------------------
async def test_precompressed_variants_are_served_when_accepted(site: Path) -> None:
    written = build_static(site)
    assert site / "app.js.br" in written
    assert site / "app.js.gz" in written
    app = make_app(site)

    br = await get(app, "/static/app.js", {"Accept-Encoding": "gzip, br"})
    assert br.headers["content-encoding"] == "br"
    assert br.headers["vary"] == "Accept-Encoding"
    assert br.headers["content-type"] == "text/javascript; charset=utf-8"
    assert br.content == (site / "app.js.br").read_bytes()
    assert brotli.decompress(br.content) == JS
    assert br.headers["etag"] == etag_of(br.content)

    gz = await get(app, "/static/app.js", {"Accept-Encoding": "br;q=0, gzip"})
    assert gz.headers["content-encoding"] == "gzip"
    assert gzip.decompress(gz.content) == JS
    assert gz.headers["etag"] == etag_of(gz.content)

    plain = await get(app, "/static/app.js")
    assert "content-encoding" not in plain.headers
    assert plain.content == JS
    # Three representations, three strong validators.
    assert len({br.headers["etag"], gz.headers["etag"], plain.headers["etag"]}) == 3

    r = await get(
        app, "/static/app.js", {"Accept-Encoding": "br", "If-None-Match": br.headers["etag"]}
    )
    assert r.status_code == 304
    assert r.headers["etag"] == br.headers["etag"]


async def test_compression_middleware_does_not_compress_a_variant_again(site: Path) -> None:
    build_static(site)
    app = CompressionMiddleware(make_app(site), minimum_size=10)
    r = await get(app, "/static/app.js", {"Accept-Encoding": "br"})
    assert r.headers["content-encoding"] == "br"
    assert r.headers["vary"] == "Accept-Encoding"
    assert brotli.decompress(r.content) == JS


async def test_a_variant_older_than_its_file_is_ignored(site: Path) -> None:
    build_static(site)
    later = time.time() + 30
    os.utime(site / "app.js", (later, later))
    r = await get(make_app(site), "/static/app.js", {"Accept-Encoding": "br, gzip"})
    assert "content-encoding" not in r.headers
    assert r.content == JS


async def test_variants_are_not_served_as_files_of_their_own(site: Path) -> None:
    build_static(site)
    r = await get(make_app(site), "/static/app.js.br")
    assert r.status_code == 404


# --- ranges --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [("bytes=0-9", 0, 9), ("bytes=10-", 10, len(JS) - 1), ("bytes=-5", len(JS) - 5, len(JS) - 1),
     ("bytes=100-999999", 100, len(JS) - 1)],
)
async def test_single_range_gives_206(site: Path, spec: str, start: int, end: int) -> None:
    r = await get(make_app(site), "/static/app.js", {"Range": spec, "Accept-Encoding": "br"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {start}-{end}/{len(JS)}"
    assert r.headers["content-length"] == str(end - start + 1)
    assert r.content == JS[start : end + 1]
    assert "content-encoding" not in r.headers  # ranges always on the identity bytes


@pytest.mark.parametrize("spec", ["bytes=999999-", "bytes=-0"])
async def test_unsatisfiable_range_gives_416(site: Path, spec: str) -> None:
    r = await get(make_app(site), "/static/app.js", {"Range": spec})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(JS)}"
    assert r.headers["content-type"] == "application/problem+json"
    assert orjson.loads(r.content)["status"] == 416


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=x-2"])
async def test_unsupported_or_invalid_range_gives_the_whole_file(site: Path, spec: str) -> None:
    r = await get(make_app(site), "/static/app.js", {"Range": spec})
    assert r.status_code == 200
    assert r.content == JS


async def test_if_range(site: Path) -> None:
    app = make_app(site)
    r = await get(app, "/static/app.js", {"Range": "bytes=0-3", "If-Range": etag_of(JS)})
    assert r.status_code == 206
    assert r.content == JS[:4]
    r = await get(app, "/static/app.js", {"Range": "bytes=0-3", "If-Range": '"old"'})
    assert r.status_code == 200
    assert r.content == JS


async def test_large_files_stream_from_disk(site: Path) -> None:
    big = os.urandom(300_000)
    (site / "big.bin").write_bytes(big)
    app = make_app(site, memory_file_limit=1024)
    r = await get(app, "/static/big.bin")
    assert r.content == big
    assert r.headers["etag"] == etag_of(big)
    r = await get(app, "/static/big.bin", {"Range": "bytes=100000-200000"})
    assert r.status_code == 206
    assert r.content == big[100000:200001]


async def test_empty_file(site: Path) -> None:
    r = await get(make_app(site), "/static/empty.txt")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "0"


async def test_symlink_inside_the_folder_is_served(site: Path) -> None:
    r = await get(make_app(site), "/static/link-in.js")
    assert r.status_code == 200
    assert r.content == JS


# --- traversal -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw_path",
    [
        b"/static/../secret.txt",
        b"/static/%2e%2e/secret.txt",
        b"/static/%2E%2E%2Fsecret.txt",
        b"/static/..%2fsecret.txt",
        b"/static/sub/../../secret.txt",
        b"/static/sub/%2e%2e/%2e%2e/secret.txt",
        b"/static//etc/passwd",
        b"/static/%2fetc%2fpasswd",
        b"/static/..%5csecret.txt",
        b"/static/..\\secret.txt",
        b"/static/app.js%00.png",
        b"/static/%00",
        b"/static/.hidden",
        b"/static/./app.js",
        b"/static/link-out",
        b"/static/dir-link/secret.txt",
        b"/static/sub",
        b"/static/",
        b"/static/missing.js",
    ],
)
async def test_traversal_and_non_files_are_404(site: Path, raw_path: bytes) -> None:
    status, body = await raw(make_app(site), raw_path)
    assert status == 404
    assert SECRET not in body
    assert orjson.loads(body)["status"] == 404


async def test_directory_must_exist() -> None:
    with pytest.raises(FileNotFoundError):
        StaticAssets("/nonexistent/static/dir")


# --- build step and wiring -----------------------------------------------------------------------
def test_build_static_writes_smaller_variants_for_compressible_files(site: Path) -> None:
    (site / "tiny.css").write_bytes(b"a{}")
    written = build_static(site)
    assert sorted(p.relative_to(site).as_posix() for p in written) == [
        "app.3f2a9c1b.js.br",
        "app.3f2a9c1b.js.gz",
        "app.js.br",
        "app.js.gz",
    ]
    assert gzip.decompress((site / "app.js.gz").read_bytes()) == JS
    assert brotli.decompress((site / "app.js.br").read_bytes()) == JS
    assert (site / "app.js.br").stat().st_mtime_ns == (site / "app.js").stat().st_mtime_ns
    # png: already compressed; tiny.css, page.html: too small; .hidden and links: skipped.
    assert not (site / "logo.png.gz").exists()
    assert not (site / "tiny.css.gz").exists()
    assert not (site / "link-in.js.gz").exists()
    # Idempotent, and rebuilt when the source changes.
    assert build_static(site) == []
    (site / "app.js").write_bytes(JS * 2)
    later = time.time() + 5
    os.utime(site / "app.js", (later, later))
    assert sorted(p.name for p in build_static(site)) == ["app.js.br", "app.js.gz"]
    assert gzip.decompress((site / "app.js.gz").read_bytes()) == JS * 2


def test_build_static_removes_a_stale_variant_of_a_file_now_too_small(site: Path) -> None:
    build_static(site)
    (site / "app.js").write_bytes(b"x")
    assert build_static(site) == []
    assert not (site / "app.js.br").exists()
    assert not (site / "app.js.gz").exists()


def test_content_types() -> None:
    assert content_type_for("a.css") == "text/css; charset=utf-8"
    assert content_type_for("a.json") == "application/json; charset=utf-8"
    assert content_type_for("a.svg") == "image/svg+xml"
    assert content_type_for("a.woff2") == "font/woff2"
    assert content_type_for("a.unknownext") == "application/octet-stream"


def test_static_directory_defaults_to_the_packaged_folder(tmp_path: Path) -> None:
    assert PACKAGED_STATIC_DIR.is_dir()
    assert static_directory(make_settings(tmp_path)) == PACKAGED_STATIC_DIR
    assert static_directory(make_settings(tmp_path, static_dir=tmp_path)) == tmp_path


async def test_the_app_serves_static_files_through_the_whole_policy_stack(
    site: Path, tmp_path: Path
) -> None:
    from stalwart.app import create_app

    build_static(site)
    settings = make_settings(tmp_path, static_dir=site, database_url="")
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        br = await get(application, "/static/app.js", {"Accept-Encoding": "br, gzip"})
        assert br.status_code == 200
        assert br.headers["content-encoding"] == "br"  # the variant, not compressed twice
        assert brotli.decompress(br.content) == JS
        assert "Accept-Encoding" in [v.strip() for v in br.headers["vary"].split(",")]
        assert br.headers["x-content-type-options"] == "nosniff"
        missing = await get(application, "/static/nope.js")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


_REVALIDATED = ("etag", "vary", "cache-control", "content-type", "content-security-policy",
               "x-frame-options", "last-modified")


@pytest.mark.parametrize("path", ["/static/app.js", "/static/sub/page.html", "/static/logo.png"])
@pytest.mark.parametrize("accept", ["br, gzip", "identity"])
async def test_a_304_carries_the_fields_of_the_200_it_revalidates(
    site: Path, tmp_path: Path, path: str, accept: str
) -> None:
    # Without variants on disk, so the compression layer compresses the 200 itself (and
    # weakens its ETag); a cache updates the stored 200 with the 304's fields (RFC 9111 4.3.4).
    from stalwart.app import create_app

    application = create_app(make_settings(tmp_path, static_dir=site, database_url=""))
    async with application.router.lifespan_context(application):
        full = await get(application, path, {"Accept-Encoding": accept})
        again = await get(application, path, {"Accept-Encoding": accept, "If-None-Match": full.headers["etag"]})
    assert (full.status_code, again.status_code) == (200, 304)
    assert {name: again.headers.get(name) for name in _REVALIDATED} == {
        name: full.headers.get(name) for name in _REVALIDATED
    }
    if path == "/static/app.js" and accept != "identity":
        assert full.headers["content-encoding"] == "br"
        assert full.headers["etag"].startswith('W/"')


async def test_a_range_keeps_the_strong_etag_the_compression_layer_leaves_alone(site: Path) -> None:
    app = Starlette()
    mount_static(app, site, compression_min_size=10)
    whole = await get(app, "/static/app.js", {"Accept-Encoding": "br"})
    part = await get(app, "/static/app.js", {"Accept-Encoding": "br", "Range": "bytes=0-9"})
    assert whole.headers["etag"] == "W/" + etag_of(JS)  # the layer outside will compress it
    assert (part.status_code, part.headers["etag"]) == (206, etag_of(JS))  # 206 is never compressed
    revalidate = {"Accept-Encoding": "br", "Range": "bytes=0-9", "If-None-Match": part.headers["etag"]}
    again = await get(app, "/static/app.js", revalidate)
    assert (again.status_code, again.headers["etag"]) == (304, etag_of(JS))  # the 206's, not the 200's
    for ignored in ("bytes=0-1,3-4", "bytes=5-1", "items=0-3"):  # answered with the whole file
        whole = await get(app, "/static/app.js", {"Accept-Encoding": "br", "Range": ignored})
        again = await get(
            app, "/static/app.js", {"Accept-Encoding": "br", "Range": ignored, "If-None-Match": whole.headers["etag"]}
        )
        assert (whole.status_code, again.status_code) == (200, 304)
        assert again.headers["etag"] == whole.headers["etag"] == "W/" + etag_of(JS)


def test_build_static_command(site: Path) -> None:
    from typer.testing import CliRunner

    from stalwart.cli import app as cli

    result = CliRunner().invoke(cli, ["build-static", str(site)])
    assert result.exit_code == 0, result.output
    assert "4 compressed variants written under" in result.output
    assert (site / "app.js.br").is_file()
