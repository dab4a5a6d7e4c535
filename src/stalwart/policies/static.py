"""Static assets under `/static`, served efficiently, and the `stalwart build-static` step.

Why not servestatic (4.4, the maintained WhiteNoise fork with ASGI support)? It was read
before writing this; it gets most things right, but not these, which matter here:

* one ETag (`mtime-size`) for every content coding of a file, although a strong validator
  must differ between representations (RFC 9110 8.8.3), and it then serves byte ranges of
  the *compressed* variant under that shared validator, without honouring `If-Range`;
* `If-None-Match` is compared as one plain string (no lists, no `*`, no weak comparison);
* its 404/405 answers are text/plain, not our problem+json;
* its ASGI path opens a new thread pool for every file it streams, and pulls in asgiref.

So this is a small replacement (Starlette's `StaticFiles` lacks precompressed variants and
the cache policy). What it does:

* strong ETag = hash of the bytes of the representation sent (identity, `.br` or `.gz`),
  `Last-Modified`, 304 on `If-None-Match` (weak comparison, lists, `*`) or, without it,
  `If-Modified-Since`; the ETag is weak when the compression layer outside will compress the
  identity bytes (`compression_min_size`), so a 304 carries the same one as its 200;
* `Cache-Control: public, max-age=31536000, immutable` for content-hashed names
  (`app.3f2a9c1b.js`, `app-3f2a9c1b.css`: a segment of 8+ lowercase hex digits after the
  first) and `public, max-age=300` otherwise;
* precompressed `name.br` / `name.gz` next to the file, served when accepted (q-values as
  in the compression middleware) and not older than the file, with `Content-Encoding`
  (so the compression middleware leaves them alone) and always `Vary: Accept-Encoding`;
* single byte ranges (206, 416 with `Content-Range: bytes */size`, `If-Range`), always
  on the identity bytes so a range never mixes codings;
* path traversal refused before touching the disk (`..`, `.` and dot-files, empty
  segments i.e. absolute paths, backslashes, NUL), then the resolved real path must lie
  inside the folder (symlinks out of it are refused), and files are opened O_NOFOLLOW;
* small files (256 KiB or less) are kept in memory, keyed by (inode, size, mtime), up to
  32 MiB in all, so a hot asset costs one stat per request.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import anyio
import anyio.to_thread
import brotli
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from stalwart.policies.compression import (
    EXCLUDED_CONTENT_TYPES,
    is_compressible_type,
    negotiate_encoding,
)
from stalwart.policies.problem import send_problem
from stalwart.settings import Settings

__all__ = [
    "PACKAGED_STATIC_DIR",
    "StaticAssets",
    "build_static",
    "content_type_for",
    "is_hashed_name",
    "mount_static",
    "static_directory",
]

PACKAGED_STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Variant suffix per content coding, in server preference order.
_VARIANTS: tuple[tuple[str, str], ...] = (("br", ".br"), ("gzip", ".gz"))
_VARIANT_SUFFIXES = tuple(suffix for _, suffix in _VARIANTS)
_CHUNK = 64 * 1024
_HASHED_SEGMENT = re.compile(r"^[0-9a-f]{8,}$")
_SEPARATORS = re.compile(r"[.\-_]")

# Web types named explicitly: the system mime.types differs between machines.
_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".cjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".wasm": "application/wasm",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
}
_CHARSET_TYPES = ("text/", "application/json", "application/manifest+json", "application/xml")


def content_type_for(name: str) -> str:
    """The Content-Type for a file name (UTF-8 charset on text types)."""
    suffix = os.path.splitext(name)[1].lower()
    media = _TYPES.get(suffix) or mimetypes.guess_type(name, strict=False)[0]
    media = media or "application/octet-stream"
    if media.startswith(_CHARSET_TYPES):
        return f"{media}; charset=utf-8"
    return media


def is_hashed_name(name: str) -> bool:
    """True for content-hashed file names: a segment of 8+ lowercase hex digits after the first.

    `app.3f2a9c1b.js`, `chunk-0a1b2c3d4e.css` yes; `app.js`, `deadbeef.js` (the hash would
    be the whole name), `app.3f2a9.js` (too short) no.
    """
    stem = name.rsplit(".", 1)[0] if "." in name else name
    segments = _SEPARATORS.split(stem)
    return any(_HASHED_SEGMENT.match(segment) for segment in segments[1:])


def static_directory(settings: Settings) -> Path:
    """`settings.static_dir`, or the folder packaged with stalwart."""
    return settings.static_dir if settings.static_dir is not None else PACKAGED_STATIC_DIR


@dataclass(slots=True)
class _Entry:
    """What is known about one file at one (inode, size, mtime)."""

    signature: tuple[int, int, int]
    etag: bytes
    body: bytes | None  # kept for small files only


@dataclass(slots=True)
class _Representation:
    path: str
    size: int
    entry: _Entry
    coding: str | None


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _open_nofollow(path: str) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))


def _hash_file(path: str, keep_limit: int) -> tuple[bytes, bytes | None]:
    digest = hashlib.sha256()
    kept: list[bytes] = []
    size = 0
    with os.fdopen(_open_nofollow(path), "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if size <= keep_limit:
                kept.append(chunk)
    etag = b'"' + digest.hexdigest()[:32].encode() + b'"'
    return etag, (b"".join(kept) if size <= keep_limit else None)


def _parse_etags(value: str) -> list[str] | None:
    """Opaque tags of an If-None-Match / If-Range value; None for `*`."""
    if value.strip() == "*":
        return None
    tags = []
    for item in value.split(","):
        item = item.strip()
        if item.startswith("W/"):
            item = item[2:]
        if item:
            tags.append(item)
    return tags


def _parse_http_date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _parse_range(value: str, size: int) -> tuple[int, int] | bool | None:
    """(start, end) inclusive; None to ignore the header (send 200); False if unsatisfiable."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multipart ranges: the whole file is a valid answer
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    first, last = first.strip(), last.strip()
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        length = int(last)
        if length == 0 or size == 0:
            return False
        return max(size - length, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid syntax: ignored, like any unreadable Range
    if start >= size:
        return False
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


class StaticAssets:
    """ASGI app serving one folder; mount it (see `mount_static`)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_age: int = 300,
        immutable_max_age: int = 31_536_000,
        memory_file_limit: int = 256 * 1024,
        memory_total_limit: int = 32 * 1024 * 1024,
        compression_min_size: int | None = None,
    ) -> None:
        """`compression_min_size`: that of the compression layer outside, if there is one."""
        root = Path(directory).resolve(strict=True)
        if not root.is_dir():
            raise NotADirectoryError(str(root))
        self.root = str(root)
        self._root_prefix = self.root.rstrip(os.sep) + os.sep
        self._short_cache = f"public, max-age={max_age}".encode()
        self._long_cache = f"public, max-age={immutable_max_age}, immutable".encode()
        self._memory_file_limit = memory_file_limit
        self._memory_total_limit = memory_total_limit
        self._memory_used = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._types: dict[str, bytes] = {}
        self._compression_min_size = compression_min_size

    # --- path safety -------------------------------------------------------------------------
    def _relative_parts(self, scope: Scope) -> list[str] | None:
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        if not path.startswith("/"):
            return None
        parts = path[1:].split("/")
        for part in parts:
            # "" covers "//abs/path" and trailing slashes; "." covers ".", ".." and dot-files.
            if not part or part.startswith(".") or "\\" in part or "\x00" in part:
                return None
        return parts

    def _inside(self, real: str) -> bool:
        return real.startswith(self._root_prefix)

    # --- file metadata -----------------------------------------------------------------------
    async def _entry(self, path: str, st: os.stat_result) -> _Entry:
        signature = _signature(st)
        entry = self._entries.get(path)
        if entry is not None and entry.signature == signature:
            self._entries.move_to_end(path)
            return entry
        limit = self._memory_file_limit
        if st.st_size > limit:
            etag, body = await anyio.to_thread.run_sync(_hash_file, path, limit)
        else:
            etag, body = _hash_file(path, limit)
        if body is not None and len(body) != st.st_size:
            body = None  # changed while read: serve from disk, rehash next time
            signature = (0, 0, 0)
        new = _Entry(signature=signature, etag=etag, body=body)
        self._store(path, new)
        return new

    def _store(self, path: str, entry: _Entry) -> None:
        old = self._entries.pop(path, None)
        if old is not None and old.body is not None:
            self._memory_used -= len(old.body)
        self._entries[path] = entry
        if entry.body is not None:
            self._memory_used += len(entry.body)
        while self._memory_used > self._memory_total_limit or len(self._entries) > 4096:
            _, evicted = self._entries.popitem(last=False)
            if evicted.body is not None:
                self._memory_used -= len(evicted.body)

    def _variant(self, real: str, suffix: str, source: os.stat_result) -> os.stat_result | None:
        try:
            st = os.lstat(real + suffix)  # lstat: a symlinked variant is never followed
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_mtime_ns < source.st_mtime_ns:
            return None  # missing, not a plain file, or older than the file it encodes
        return st

    def _content_type(self, name: str) -> bytes:
        value = self._types.get(name)
        if value is None:
            value = content_type_for(name).encode()
            if len(self._types) < 4096:
                self._types[name] = value
        return value

    # --- request -----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await send_problem(scope, send, 405, headers=[(b"allow", b"GET, HEAD")])
            return
        parts = self._relative_parts(scope)
        real = self._resolve(parts) if parts else None
        st = None
        if real is not None:
            try:
                st = os.stat(real)
            except (OSError, ValueError):
                st = None
        if real is None or st is None or not stat.S_ISREG(st.st_mode) or self._is_variant(real):
            await send_problem(scope, send, 404, detail="No such static file.")
            return

        headers = _request_headers(scope)
        range_header = headers.get("range") if method == "GET" else None
        rep = await self._select(real, st, headers.get("accept-encoding", ""), range_header)
        name = real.rsplit(os.sep, 1)[-1]
        content_type = self._content_type(name)
        etag = rep.entry.etag
        # A range to serve (a tuple) or to refuse (False); None: the whole file is sent.
        parsed = (
            _parse_range(range_header, rep.size)
            if range_header is not None and _if_range_ok(headers, rep.entry.etag, st.st_mtime)
            else None
        )
        if rep.coding is None and parsed is None and self._compressed_outside(content_type, rep.size, headers):
            # The compression layer will compress these bytes and weaken the ETag of the 200
            # (the bytes sent are not these); weakened here, the 304 carries the same one. Not
            # for a range that is served (a 206 is never compressed) or refused (a 416).
            etag = b"W/" + etag
        common = [
            (b"cache-control", self._long_cache if is_hashed_name(name) else self._short_cache),
            (b"etag", etag),
            (b"last-modified", formatdate(st.st_mtime, usegmt=True).encode()),
            (b"vary", b"Accept-Encoding"),
        ]

        if _not_modified(headers, rep.entry.etag, st.st_mtime):
            # Content-Type too, though a 304 may omit it (RFC 9110 15.4.5): the security
            # headers layer chooses the CSP by it, and a cache updates the stored 200 with this
            # answer's fields, so they must be the 200's.
            not_modified = [(b"content-type", content_type), *common]
            await send({"type": "http.response.start", "status": 304, "headers": not_modified})
            await send({"type": "http.response.body", "body": b""})
            return

        out = [(b"content-type", content_type), (b"accept-ranges", b"bytes"), *common]
        if rep.coding is not None:
            out.append((b"content-encoding", rep.coding.encode()))
        start, end, status = 0, rep.size - 1, 200
        if parsed is not None:
            if parsed is False:
                await send_problem(
                    scope,
                    send,
                    416,
                    detail=f"The range is outside the file ({rep.size} bytes).",
                    headers=[(b"content-range", f"bytes */{rep.size}".encode()), *common],
                )
                return
            if isinstance(parsed, tuple):
                start, end = parsed
                status = 206
                out.append((b"content-range", f"bytes {start}-{end}/{rep.size}".encode()))
        length = max(end - start + 1, 0)
        out.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        if method == "HEAD" or length == 0:
            await send({"type": "http.response.body", "body": b""})
            return
        if rep.entry.body is not None:
            await send({"type": "http.response.body", "body": rep.entry.body[start : end + 1]})
            return
        await _stream(send, rep.path, start, length)

    def _resolve(self, parts: list[str]) -> str | None:
        try:
            real = os.path.realpath(os.path.join(self.root, *parts))
        except (OSError, ValueError):
            return None
        return real if self._inside(real) else None

    def _is_variant(self, real: str) -> bool:
        # `app.js.br` is served as the encoding of `app.js`, never as a file of its own.
        return any(real.endswith(s) and os.path.isfile(real[: -len(s)]) for s in _VARIANT_SUFFIXES)

    def _compressed_outside(self, content_type: bytes, size: int, headers: dict[str, str]) -> bool:
        """Whether the compression layer will compress a 200 of these identity bytes."""
        min_size = self._compression_min_size
        return (
            min_size is not None
            and size >= min_size
            and is_compressible_type(content_type, EXCLUDED_CONTENT_TYPES)
            and negotiate_encoding(headers.get("accept-encoding", "")) is not None
        )

    async def _select(
        self, real: str, st: os.stat_result, accept_encoding: str, range_header: str | None
    ) -> _Representation:
        if range_header is None and accept_encoding:
            found: dict[str, tuple[str, os.stat_result]] = {}
            for coding, suffix in _VARIANTS:
                variant = self._variant(real, suffix, st)
                if variant is not None:
                    found[coding] = (real + suffix, variant)
            if found:
                chosen = negotiate_encoding(accept_encoding, tuple(found))
                if chosen is not None:
                    path, vst = found[chosen]
                    return _Representation(path, vst.st_size, await self._entry(path, vst), chosen)
        return _Representation(real, st.st_size, await self._entry(real, st), None)


def _request_headers(scope: Scope) -> dict[str, str]:
    wanted = (
        b"accept-encoding",
        b"if-none-match",
        b"if-modified-since",
        b"range",
        b"if-range",
    )
    result: dict[str, str] = {}
    for key, value in scope["headers"]:
        if key in wanted:
            name = key.decode()
            text = value.decode("latin-1")
            result[name] = f"{result[name]}, {text}" if name in result else text
    return result


def _not_modified(headers: dict[str, str], etag: bytes, mtime: float) -> bool:
    inm = headers.get("if-none-match")
    if inm is not None:
        tags = _parse_etags(inm)
        return tags is None or etag.decode() in tags
    ims = headers.get("if-modified-since")
    if ims is not None:
        since = _parse_http_date(ims)
        return since is not None and int(mtime) <= since
    return False


def _if_range_ok(headers: dict[str, str], etag: bytes, mtime: float) -> bool:
    value = headers.get("if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith("W/"):
        return False  # If-Range needs a strong validator
    if value.startswith('"'):
        return value == etag.decode()
    since = _parse_http_date(value)
    return since is not None and int(mtime) == int(since)


async def _stream(send: Send, path: str, start: int, length: int) -> None:
    async with await anyio.open_file(_open_nofollow(path), "rb") as file:
        await file.seek(start)
        remaining = length
        while remaining > 0:
            chunk = await file.read(min(_CHUNK, remaining))
            if not chunk:
                break  # the file shrank under us; the server will close the connection
            remaining -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
        if remaining > 0:
            await send({"type": "http.response.body", "body": b""})


def mount_static(
    app: Starlette,
    directory: str | os.PathLike[str] | None = None,
    path: str = "/static",
    **options: int,
) -> StaticAssets:
    """Mount `directory` (default: the packaged folder) at `path` on `app`, named "static"."""
    assets = StaticAssets(directory if directory is not None else PACKAGED_STATIC_DIR, **options)
    app.mount(path, assets, name="static")
    return assets


# --- build step ----------------------------------------------------------------------------------
def _up_to_date(target: Path, source: os.stat_result) -> bool:
    try:
        st = os.lstat(target)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_mtime_ns == source.st_mtime_ns


def _write_variant(target: Path, data: bytes, source: os.stat_result) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    # The variant carries its source's mtime: the server takes a variant older than its
    # source as stale, and the next build sees an unchanged pair as up to date.
    os.utime(tmp, ns=(source.st_atime_ns, source.st_mtime_ns))
    os.replace(tmp, target)


def _compressible_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(_VARIANT_SUFFIXES):
                continue
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            if is_compressible_type(content_type_for(name), EXCLUDED_CONTENT_TYPES):
                yield path


def build_static(directory: str | os.PathLike[str], *, min_size: int = 256) -> list[Path]:
    """Write `name.br` (brotli 11) and `name.gz` (gzip 9) next to each compressible file.

    Files under `min_size` bytes and variants that would not be smaller are skipped (a
    stale variant of theirs is removed). Unchanged files are not recompressed. Returns the
    variants written.
    """
    root = Path(directory).resolve(strict=True)
    written: list[Path] = []
    for path in _compressible_files(root):
        source = path.stat()
        data: bytes | None = None
        for coding, suffix in _VARIANTS:
            target = path.with_name(path.name + suffix)
            if source.st_size >= min_size and _up_to_date(target, source):
                continue
            if source.st_size >= min_size:
                if data is None:
                    data = path.read_bytes()
                compressed = (
                    brotli.compress(data, quality=11)
                    if coding == "br"
                    else gzip.compress(data, compresslevel=9, mtime=0)
                )
            else:
                compressed = b""
            if not compressed or len(compressed) >= source.st_size:
                if target.is_file() and not target.is_symlink():
                    target.unlink()  # a stale variant of a file that should have none
                continue
            _write_variant(target, compressed, source)
            written.append(target)
    return written
