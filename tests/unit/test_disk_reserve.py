"""The image filesystem's reserve covers inodes as well as bytes: a layer of millions of tiny
files must not take the node's last inodes (statvfs is faked; the disk is not filled)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest

from agent.errors import ResourceExhausted
from agent.images import unpack_process
from agent.images.download import check_free_space
from agent.images.unpack_process import BelowReserve, UnpackFailure, _check_reserve, unpack

GIB = 1 << 30


def statvfs(*, files: int, favail: int, free_bytes: int = 100 * GIB) -> os.statvfs_result:
    """(bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax)."""
    blocks = free_bytes // 4096
    return os.statvfs_result((4096, 4096, blocks, blocks, blocks, files, favail, favail, 0, 255))


def fake(monkeypatch, result: os.statvfs_result) -> None:
    monkeypatch.setattr(os, "statvfs", lambda path: result)


@pytest.mark.parametrize(
    ("files", "favail"),
    [
        (10_000_000, 9_999),  # the fixed 10000 inode reserve
        (100_000, 999),  # 1% of a small filesystem's inodes
    ],
)
def test_a_filesystem_under_its_inode_reserve_is_refused(monkeypatch, files, favail):
    fake(monkeypatch, statvfs(files=files, favail=favail))
    with pytest.raises(ResourceExhausted, match="inodes"):
        check_free_space("/images", 0, 1 << 30)
    with pytest.raises(BelowReserve, match="inodes"):
        _check_reserve("/images", 1 << 30)


@pytest.mark.parametrize(
    ("files", "favail"),
    [
        (10_000_000, 10_000),
        (100_000, 1_000),
        (0, 0),  # btrfs and others count no inodes: nothing to keep
    ],
)
def test_a_filesystem_with_inodes_to_spare_is_accepted(monkeypatch, files, favail):
    fake(monkeypatch, statvfs(files=files, favail=favail))
    check_free_space("/images", 0, 1 << 30)
    _check_reserve("/images", 1 << 30)
    assert unpack_process.inode_reserve(os.statvfs("/images")) == min(files // 100, 10_000)


def _empty_files_layer(tmp_path, count: int) -> dict[str, object]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(count):
            tar.addfile(tarfile.TarInfo(f"f{i}"))
    blob = buffer.getvalue()
    (tmp_path / "blob").write_bytes(blob)
    (tmp_path / "dest").mkdir()
    return {
        "blob_path": str(tmp_path / "blob"),
        "blob_size": len(blob),
        "blob_digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "diff_id": "",
        "compression": "",
        "dest": str(tmp_path / "dest"),
        "reserve_bytes": 1 << 20,
    }


def test_an_unpack_stops_at_the_inode_reserve_while_it_extracts(monkeypatch, tmp_path):
    """The decompressor runs up to 16 MiB (32768 empty files) ahead of the extraction, so
    its check alone sees the inodes as they were before the layer; the extractor checks."""
    job = _empty_files_layer(tmp_path, 6000)  # 3 MiB of tar
    dest = tmp_path / "dest"
    # 200000 inodes (a 2000 reserve), 5000 free before the layer: 3000 files may be made.
    monkeypatch.setattr(
        os, "statvfs", lambda path: statvfs(files=200_000, favail=5000 - len(os.listdir(dest)))
    )
    watermarks = io.BytesIO(f"{job['blob_size']}\n".encode())
    result = unpack(job, watermarks)
    assert result["ok"] is False and result["kind"] == UnpackFailure.SPACE.value, result
    assert "inodes" in result["error"]
    # One chunk (1 MiB: 2048 entries) at most past the check that still passed.
    assert 3000 <= len(os.listdir(dest)) <= 3000 + 2048
