"""The archive format: round trip, encryption, and refusal of any damaged byte."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stalwart.ops.archive import (
    ArchiveError,
    DataInfo,
    Manifest,
    extract_data,
    new_encryption,
    read_manifest,
    verify_archive_bytes,
    verify_archive_file,
    write_archive,
)

KEY = "a-test-backup-key-that-is-long-enough"


def _archive(tmp_path: Path, payload: bytes, key: str | None) -> tuple[Path, Manifest]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    data = work / "data"
    data.write_bytes(payload)
    encryption, derived = new_encryption(key) if key else (None, None)
    manifest = Manifest(
        created_at=datetime(2025, 1, 2, 3, 4, 5, 678, tzinfo=UTC),
        app_version="test",
        backend="sqlite",
        schema_revision="0003",
        row_counts={"notes": 3},
        data=DataInfo(
            name="data.zst.enc" if key else "data.zst", sha256=hashlib.sha256(payload).hexdigest(), size=len(payload)
        ),
        encryption=encryption,
    )
    dest = tmp_path / "a.tar"
    write_archive(dest, manifest, data, derived, work)
    return dest, manifest


@pytest.mark.parametrize("key", [None, KEY])
def test_round_trip_over_several_chunks(tmp_path: Path, key: str | None) -> None:
    payload = os.urandom(2_500_000) + b"\x00" * 1_000_000  # > 3 chunks, part compressible
    path, manifest = _archive(tmp_path, payload, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert verify_archive_bytes(path) == manifest
    assert read_manifest(path) == manifest
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["manifest.json", manifest.data.name, "archive.sha256"]
    out = tmp_path / "out"
    extract_data(path, manifest, key, out)
    assert out.read_bytes() == payload
    assert not list(tmp_path.glob("work/payload")), "the temporary payload is removed"


def test_empty_data_round_trips_encrypted(tmp_path: Path) -> None:
    path, manifest = _archive(tmp_path, b"", KEY)
    out = tmp_path / "out"
    extract_data(path, manifest, KEY, out)
    assert out.read_bytes() == b""


def test_encrypted_payload_does_not_contain_the_plaintext(tmp_path: Path) -> None:
    secret = b"alice@example.com has a secret note " * 100
    path, _ = _archive(tmp_path, secret, KEY)
    raw = path.read_bytes()
    assert b"alice@example.com" not in raw
    assert b"a-test-backup-key" not in raw


def test_wrong_key_and_missing_key_are_refused_by_name(tmp_path: Path) -> None:
    path, manifest = _archive(tmp_path, b"data" * 100, KEY)
    with pytest.raises(ArchiveError, match=r"^wrong encryption key for this archive"):
        extract_data(path, manifest, "another-key-of-a-decent-length", tmp_path / "o")
    with pytest.raises(ArchiveError, match=r"^archive is encrypted and STALWART_BACKUP_ENCRYPTION"):
        extract_data(path, manifest, None, tmp_path / "o")


def test_every_single_byte_change_is_refused(tmp_path: Path) -> None:
    """Flip each byte of a whole archive in turn: not one variant is accepted."""
    path, manifest = _archive(tmp_path, b"0123456789" * 30, KEY)
    original = path.read_bytes()
    assert len(original) == 10240
    positions = range(len(original))
    accepted = []
    for position in positions:
        damaged = bytearray(original)
        damaged[position] ^= 0x01
        try:
            verify_archive_file(io.BytesIO(damaged), len(damaged))
        except ArchiveError:
            continue
        accepted.append(position)
    assert accepted == []
    assert verify_archive_file(io.BytesIO(original), len(original)) == manifest


@pytest.mark.parametrize("keep", [0, 100, 512, 1500, 2560, 10239])
def test_truncated_archive_is_refused(tmp_path: Path, keep: int) -> None:
    path, _ = _archive(tmp_path, os.urandom(1500), None)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ArchiveError):
        verify_archive_bytes(path)


def test_payload_tampering_is_caught_by_decryption_even_with_a_fixed_checksum(
    tmp_path: Path,
) -> None:
    """Someone who rewrites the checksum member still cannot change encrypted data."""
    path, manifest = _archive(tmp_path, b"x" * 5000, KEY)
    with tarfile.open(path) as tar:
        info = tar.getmember(manifest.data.name)
    raw = bytearray(path.read_bytes())
    raw[info.offset_data + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="fails authentication"):
        extract_data(path, manifest, KEY, tmp_path / "o")


def test_a_file_that_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(b"hello world")
    with pytest.raises(ArchiveError, match="unreadable tar"):
        verify_archive_bytes(path)
