"""The backup archive format: a plain tar that detects any changed byte.

Members, in this order:

1. `manifest.json`: format, creation time, backend, schema revision, row counts per table,
   SHA-256 and size of the database file, encryption parameters (never the key).
2. `data.zst` (or `data.zst.enc`): the database file (SQLite file or `pg_dump -Fc`),
   zstd-compressed, then optionally encrypted with AES-256-GCM in 1 MiB chunks (the key
   derived with scrypt from `backup_encryption_key`; each chunk authenticated with the
   manifest's digest, its position and a last-chunk flag, so reordering or truncation fails).
3. `archive.sha256`: SHA-256 of every archive byte before this member's header. The bytes
   after it are tar padding and must all be zero. Together with the tar header checksums,
   one flipped byte anywhere, or a truncation, is refused.

`tar tf` lists it, `tar xf` extracts the manifest for reading by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import secrets
import tarfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import BaseModel, SecretStr, ValidationError

__all__ = [
    "ArchiveError",
    "DataInfo",
    "Encryption",
    "Manifest",
    "extract_data",
    "new_encryption",
    "passphrase_of",
    "read_manifest",
    "verify_archive_bytes",
    "verify_archive_file",
    "write_archive",
]

MANIFEST_NAME = "manifest.json"
CHECKSUM_NAME = "archive.sha256"
CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_KEY_CHECK_INFO = b"stalwart-backup key check"


class ArchiveError(Exception):
    """The archive cannot be used; the message is one line for the operator."""


class DataInfo(BaseModel):
    name: str
    sha256: str
    size: int
    compression: Literal["zstd"] = "zstd"


class Encryption(BaseModel):
    alg: Literal["AES-256-GCM-CHUNKED"] = "AES-256-GCM-CHUNKED"
    kdf: Literal["scrypt"] = "scrypt"
    n: int
    r: int
    p: int
    salt: str
    nonce_prefix: str
    chunk_size: int
    key_check: str


class Manifest(BaseModel):
    format: Literal["stalwart-backup"] = "stalwart-backup"
    format_version: Literal[1] = 1
    created_at: datetime
    app_version: str
    backend: Literal["sqlite", "postgresql"]
    schema_revision: str | None
    row_counts: dict[str, int]
    data: DataInfo
    encryption: Encryption | None = None


# --- encryption --------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # scrypt: a guessable passphrase still costs an attacker 32 MiB and ~0.1 s per guess.
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def _key_check(key: bytes) -> str:
    return _b64(hmac.new(key, _KEY_CHECK_INFO, hashlib.sha256).digest()[:16])


def passphrase_of(secret: SecretStr | None) -> str | None:
    """The configured backup key; unset and empty both mean "no encryption"."""
    value = secret.get_secret_value() if secret is not None else ""
    return value or None


def new_encryption(passphrase: str) -> tuple[Encryption, bytes]:
    """Fresh parameters for one archive, and the derived key."""
    salt, n, r, p = secrets.token_bytes(16), 2**15, 8, 1
    key = _derive(passphrase, salt, n, r, p)
    params = Encryption(
        n=n,
        r=r,
        p=p,
        salt=_b64(salt),
        nonce_prefix=_b64(secrets.token_bytes(8)),
        chunk_size=CHUNK,
        key_check=_key_check(key),
    )
    return params, key


def _key_for(params: Encryption, passphrase: str | None) -> bytes:
    if passphrase is None:
        raise ArchiveError("archive is encrypted and STALWART_BACKUP_ENCRYPTION_KEY is not set")
    try:
        key = _derive(passphrase, _unb64(params.salt), params.n, params.r, params.p)
    except ValueError:
        raise ArchiveError("archive is corrupt: invalid encryption parameters") from None
    if not hmac.compare_digest(_key_check(key), params.key_check):
        raise ArchiveError("wrong encryption key for this archive (STALWART_BACKUP_ENCRYPTION_KEY)")
    return key


def _nonce(prefix: bytes, counter: int) -> bytes:
    return prefix + counter.to_bytes(4, "big")


class _EncryptingWriter(io.RawIOBase):
    """Buffers plaintext and writes [length][ciphertext] chunks; the last one is flagged."""

    def __init__(self, sink: IO[bytes], key: bytes, params: Encryption, aad: bytes) -> None:
        self.sink = sink
        self.aead = AESGCM(key)
        self.prefix = _unb64(params.nonce_prefix)
        self.chunk = params.chunk_size
        self.aad = aad
        self.buffer = bytearray()
        self.counter = 0

    def writable(self) -> bool:
        return True

    def _emit(self, plain: bytes, last: bool) -> None:
        sealed = self.aead.encrypt(_nonce(self.prefix, self.counter), plain, self.aad + (b"\x01" if last else b"\x00"))
        self.sink.write(len(sealed).to_bytes(4, "big"))
        self.sink.write(sealed)
        self.counter += 1

    def write(self, data: Any) -> int:
        self.buffer += data
        # Keep at least one byte back: only close() knows which chunk is the last.
        while len(self.buffer) > self.chunk:
            self._emit(bytes(self.buffer[: self.chunk]), last=False)
            del self.buffer[: self.chunk]
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._emit(bytes(self.buffer), last=True)
            self.buffer.clear()
        super().close()


def _decrypt_chunks(source: IO[bytes], size: int, key: bytes, params: Encryption, aad: bytes) -> Iterator[bytes]:
    aead = AESGCM(key)
    prefix = _unb64(params.nonce_prefix)
    remaining = size
    counter = 0
    while True:
        header = source.read(4)
        if len(header) != 4:
            raise ArchiveError("archive is corrupt: encrypted data is truncated")
        length = int.from_bytes(header, "big")
        if length < 16 or length > params.chunk_size + 16 or length > remaining - 4:
            raise ArchiveError("archive is corrupt: bad encrypted chunk")
        sealed = source.read(length)
        remaining -= 4 + length
        last = remaining == 0
        try:
            yield aead.decrypt(_nonce(prefix, counter), sealed, aad + (b"\x01" if last else b"\x00"))
        except InvalidTag:
            raise ArchiveError("archive is corrupt: encrypted data fails authentication") from None
        counter += 1
        if last:
            return


# --- writing -----------------------------------------------------------------------------------


class _HashingWriter:
    """The file object tarfile writes to: hashes every byte on its way to disk."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()
        self.position = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.sink.write(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position


def _member(name: str, size: int, mtime: datetime) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime.timestamp())
    info.mode = 0o600
    return info


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.GNU_FORMAT, tarfile.ENCODING, "surrogateescape")


def manifest_bytes(manifest: Manifest) -> bytes:
    return manifest.model_dump_json(indent=2).encode() + b"\n"


def write_archive(dest: Path, manifest: Manifest, data_file: Path, key: bytes | None, workdir: Path) -> None:
    """Compress (and encrypt) `data_file` and write the archive at `dest` atomically (0600)."""
    meta = manifest_bytes(manifest)
    aad = hashlib.sha256(meta).digest()
    payload = workdir / "payload"
    with payload.open("wb") as raw_out:
        sink: IO[bytes] = raw_out
        encrypting: _EncryptingWriter | None = None
        if key is not None:
            assert manifest.encryption is not None
            encrypting = _EncryptingWriter(raw_out, key, manifest.encryption, aad)
            sink = encrypting  # type: ignore[assignment]
        compressor = zstandard.ZstdCompressor(level=3).stream_writer(sink, closefd=False)
        with data_file.open("rb") as src:
            while block := src.read(CHUNK):
                compressor.write(block)
        compressor.close()  # type: ignore[no-untyped-call]
        if encrypting is not None:
            encrypting.close()
    partial = dest.with_name(dest.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        hashing = _HashingWriter(fh)
        with tarfile.open(fileobj=hashing, mode="w", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
            tar.addfile(_member(MANIFEST_NAME, len(meta), manifest.created_at), io.BytesIO(meta))
            with payload.open("rb") as body:
                tar.addfile(_member(manifest.data.name, payload.stat().st_size, manifest.created_at), body)
            checksum = (hashing.digest.hexdigest() + "\n").encode()
            tar.addfile(_member(CHECKSUM_NAME, len(checksum), manifest.created_at), io.BytesIO(checksum))
        fh.flush()
        os.fsync(fh.fileno())
    payload.unlink()
    os.replace(partial, dest)


# --- reading -----------------------------------------------------------------------------------


def _members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    try:
        return tar.getmembers()
    except (tarfile.TarError, EOFError, OSError):
        raise ArchiveError("archive is corrupt or truncated (unreadable tar)") from None


def _parse_manifest(raw: bytes) -> Manifest:
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError:
        raise ArchiveError("not a Stalwart backup archive (bad manifest)") from None


def read_manifest(path: Path) -> Manifest:
    """The manifest alone (cheap: first member only); no integrity check."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME:
                raise ArchiveError("not a Stalwart backup archive (no manifest)")
            fh = tar.extractfile(first)
            assert fh is not None
            return _parse_manifest(fh.read())
    except (tarfile.TarError, EOFError, OSError):
        raise ArchiveError("not a Stalwart backup archive (unreadable tar)") from None


def verify_archive_bytes(path: Path) -> Manifest:
    """Check the whole-archive checksum and layout; return the manifest."""
    try:
        with path.open("rb") as fh:
            return verify_archive_file(fh, path.stat().st_size)
    except OSError:
        raise ArchiveError("archive is unreadable") from None


def verify_archive_file(fh: IO[bytes], size: int) -> Manifest:
    try:
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            return _verify_open(tar, size)
    except (tarfile.TarError, EOFError, OSError):
        raise ArchiveError("archive is corrupt or truncated (unreadable tar)") from None


def _verify_open(tar: tarfile.TarFile, size: int) -> Manifest:
    members = _members(tar)
    names = [m.name for m in members]
    if len(names) < 3 and names[:1] == [MANIFEST_NAME]:
        raise ArchiveError("archive is corrupt or truncated (members missing)")
    if len(names) != 3 or names[0] != MANIFEST_NAME or names[2] != CHECKSUM_NAME:
        raise ArchiveError("not a Stalwart backup archive (unexpected members)")
    manifest_info, data_info, check_info = members
    end = check_info.offset_data + check_info.size
    if any(m.offset_data + m.size > size for m in members) or size < end + 2 * _BLOCK:
        raise ArchiveError("archive is truncated")
    fh = tar.fileobj
    assert fh is not None
    digest = hashlib.sha256()
    fh.seek(0)
    remaining = check_info.offset
    while remaining:
        block = fh.read(min(CHUNK, remaining))
        if not block:
            raise ArchiveError("archive is truncated")
        digest.update(block)
        remaining -= len(block)
    header = fh.read(check_info.offset_data - check_info.offset)
    stored = fh.read(check_info.size)
    if not hmac.compare_digest(stored, (digest.hexdigest() + "\n").encode()):
        raise ArchiveError("archive is corrupt: checksum mismatch")
    fh.seek(end)
    while block := fh.read(CHUNK):
        if block.count(0) != len(block):
            raise ArchiveError("archive is corrupt: data after the end of the archive")
    if size % _BLOCK:
        raise ArchiveError("archive is truncated")
    reader = tar.extractfile(manifest_info)
    assert reader is not None
    manifest = _parse_manifest(reader.read())
    # The checksum member's own header is outside the digest, and tar's header checksum
    # skips its own field: compare the header byte for byte with the one we write.
    if header != _header(_member(CHECKSUM_NAME, check_info.size, manifest.created_at)):
        raise ArchiveError("archive is corrupt: checksum header mismatch")
    if data_info.name != manifest.data.name:
        raise ArchiveError("not a Stalwart backup archive (unexpected members)")
    return manifest


def extract_data(path: Path, manifest: Manifest, passphrase: str | None, dest: Path) -> None:
    """Decrypt and decompress the database file into `dest`; check its SHA-256 and size."""
    key = _key_for(manifest.encryption, passphrase) if manifest.encryption is not None else None
    aad = None
    with tarfile.open(path, mode="r:") as tar:
        members = _members(tar)
        meta_fh = tar.extractfile(members[0])
        data_fh = tar.extractfile(members[1])
        assert meta_fh is not None
        assert data_fh is not None
        aad = hashlib.sha256(meta_fh.read()).digest()
        chunks: Iterator[bytes]
        if key is not None:
            assert manifest.encryption is not None
            chunks = _decrypt_chunks(data_fh, members[1].size, key, manifest.encryption, aad)
        else:
            chunks = iter(lambda: data_fh.read(CHUNK), b"")
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        digest = hashlib.sha256()
        written = 0
        with dest.open("wb") as out:
            try:
                for chunk in chunks:
                    plain = decompressor.decompress(chunk)
                    digest.update(plain)
                    written += len(plain)
                    out.write(plain)
            except zstandard.ZstdError:
                raise ArchiveError("archive is corrupt: data does not decompress") from None
    if not decompressor.eof or written != manifest.data.size:
        raise ArchiveError("archive is corrupt: data is incomplete")
    if not hmac.compare_digest(digest.hexdigest(), manifest.data.sha256):
        raise ArchiveError("archive is corrupt: data checksum mismatch")
