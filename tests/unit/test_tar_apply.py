"""apply_layer on in-memory tars: overlay whiteouts, replacement rules, hostile entries."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from agent._util.fs import disk_usage
from agent.images.snapshots import chain_ids
from agent.images.tar_apply import LayerError, TarSource, apply_layer
from tests.support.layers import (
    ESCAPE_NAME,
    MALICIOUS,
    Dir,
    File,
    Hardlink,
    Opaque,
    Symlink,
    Whiteout,
    build_tar,
    truncated_tar,
)


@pytest.fixture(autouse=True)
def umask_zero():
    old = os.umask(0)  # as in the unpack worker
    yield
    os.umask(old)


def apply(entries, root, chunk=777):
    """Apply a tar fed in odd-sized chunks (exercises reads across chunk borders)."""
    data = build_tar(entries) if not isinstance(entries, bytes) else entries
    pieces = iter([data[i : i + chunk] for i in range(0, len(data), chunk)])
    return apply_layer(TarSource(lambda: next(pieces, b"")), str(root))


def test_files_dirs_and_modes(tmp_path):
    stats = apply(
        [
            Dir("a", mode=0o700),
            File("a/f", b"hello", mode=0o600),
            Dir("t", mode=0o1777),
            File("x", b"x" * 100_000),
        ],
        tmp_path,
    )
    assert stats.entries == 4
    assert stat.S_IMODE(os.lstat(tmp_path / "a").st_mode) == 0o700
    assert (tmp_path / "a" / "f").read_bytes() == b"hello"
    assert stat.S_IMODE(os.lstat(tmp_path / "t").st_mode) == 0o1777
    assert (tmp_path / "x").read_bytes() == b"x" * 100_000


def test_later_entries_replace_earlier_ones(tmp_path):
    apply(
        [
            File("p", b"file"),
            Dir("p"),
            File("p/inner", b"1"),  # file -> dir
            Dir("q"),
            File("q/child", b"c"),
            File("q", b"now a file"),  # dir -> file
            File("r", b"old"),
            File("r", b"new"),
        ],
        tmp_path,
    )
    assert (tmp_path / "p" / "inner").read_bytes() == b"1"
    assert (tmp_path / "q").read_bytes() == b"now a file"
    assert (tmp_path / "r").read_bytes() == b"new"


def test_missing_parents_are_created(tmp_path):
    apply([File("deep/er/file", b"x")], tmp_path)
    assert (tmp_path / "deep" / "er" / "file").read_bytes() == b"x"


def test_whiteouts_become_overlay_markers(tmp_path):
    apply([Dir("d"), Whiteout("d/gone"), Opaque("d"), Whiteout("top")], tmp_path)
    for path in (tmp_path / "d" / "gone", tmp_path / "top"):
        st = os.lstat(path)
        assert stat.S_ISCHR(st.st_mode)
        assert st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(tmp_path / "d", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(tmp_path / "d")) == ["gone"]


def test_a_whiteout_does_not_hide_its_own_layer(tmp_path):
    apply([File("keep", b"mine"), Whiteout("keep")], tmp_path)
    assert (tmp_path / "keep").read_bytes() == b"mine"


def test_symlinks_resolve_inside_the_root(tmp_path):
    apply(
        [
            Dir("real"),
            Symlink("link", "/real"),
            File("link/f", b"through"),
            Symlink("up", "../../.."),
            File("up/g", b"clamped"),
        ],
        tmp_path,
    )
    assert (tmp_path / "real" / "f").read_bytes() == b"through"
    assert (tmp_path / "g").read_bytes() == b"clamped"
    assert os.readlink(tmp_path / "link") == "/real"


def test_symlink_loops_are_refused(tmp_path):
    with pytest.raises(LayerError, match="too many levels of symlinks"):
        apply([Symlink("a", "b"), Symlink("b", "a"), File("a/x", b"x")], tmp_path)


def test_hardlinks(tmp_path):
    apply(
        [File("f", b"data"), Hardlink("h", "f"), Symlink("s", "f"), Hardlink("hs", "s")], tmp_path
    )
    assert os.lstat(tmp_path / "h").st_ino == os.lstat(tmp_path / "f").st_ino
    assert os.lstat(tmp_path / "hs").st_ino == os.lstat(tmp_path / "s").st_ino  # not followed
    with pytest.raises(LayerError, match="not in this layer"):
        apply([Hardlink("h2", "missing")], _fresh(tmp_path))


def _fresh(tmp_path):
    path = tmp_path / "fresh"
    path.mkdir()
    return path


def test_overlay_xattrs_from_the_image_are_ignored(tmp_path):
    stats = apply(
        [File("f", b"x", xattrs={"trusted.overlay.redirect": b"/etc", "user.ok": b"yes"})], tmp_path
    )
    assert os.getxattr(tmp_path / "f", "user.ok") == b"yes"
    assert "trusted.overlay.redirect" not in os.listxattr(tmp_path / "f")
    assert any("ignored xattr trusted.overlay.redirect" in w for w in stats.warnings)


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_hostile_entries_stay_inside(tmp_path, case):
    root = tmp_path / "root"
    root.mkdir()
    outside = f"/tmp/{ESCAPE_NAME}"
    if os.path.lexists(outside):
        os.unlink(outside)
    try:
        apply(list(MALICIOUS[case]), root)
    except LayerError:
        pass
    else:
        assert (root / "tmp" / ESCAPE_NAME).exists()
    assert not os.path.lexists(outside)
    assert not (tmp_path / ESCAPE_NAME).exists()


def test_truncated_and_garbage_tars_are_refused(tmp_path):
    with pytest.raises(LayerError, match=r"corrupt or truncated|ends in the middle"):
        apply(truncated_tar([File("a", b"a" * 5000), File("b", b"b" * 90_000)]), _fresh(tmp_path))
    with pytest.raises(LayerError):
        apply(b"this is not a tar archive at all" * 40, tmp_path)


def test_disk_usage_counts_hardlinks_once(tmp_path):
    apply([File("f", b"x" * 10000), Hardlink("h", "f"), Dir("d")], tmp_path)
    used, inodes = disk_usage(str(tmp_path))
    assert inodes == 3  # root, f (= h), d
    assert used >= 10000


def test_chain_ids_follow_the_spec():
    d1, d2 = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    ids = chain_ids([d1, d2])
    assert ids[0] == d1
    assert ids[1] == "sha256:" + hashlib.sha256(f"{d1} {d2}".encode()).hexdigest()
