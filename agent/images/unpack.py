"""Apply one layer tar to an empty directory that becomes an overlay lowerdir.

Every path is resolved inside the layer root the way the container will see
it: a symlink met on the way is followed as if the root were ``/`` (an
absolute target or a ``..`` can never climb out), and the last component is
never followed (it is what we create or replace). Whiteouts are converted to
overlayfs form as containerd does: ``.wh.X`` becomes a 0/0 character device
``X``, ``.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on its directory.
Ownership, modes, mtimes, xattrs, hardlinks, symlinks, devices (where the
kernel allows mknod) and sparse files are kept. A malformed or hostile entry
fails the whole layer with :class:`LayerError`; the caller discards the
directory, so nothing half-applied is ever used.

This module runs inside the unpack worker process, never on the event loop.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, cast

from agent.errors import InvalidArgument

__all__ = ["LayerError", "LayerStats", "apply_layer", "disk_usage"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_MAX_SYMLINK_HOPS = 40
_COPY_CHUNK = 1 << 20
#: xattrs a layer may not set: they would steer overlayfs, not describe a file.
_FORBIDDEN_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def _sparse_map(member: tarfile.TarInfo) -> list[tuple[int, int]]:
    """``(offset, length)`` data regions of a sparse member (typeshed types it loosely)."""
    return cast(list[tuple[int, int]], member.sparse or [])


class LayerError(InvalidArgument):
    """The layer cannot be applied safely; the message names the entry."""


@dataclass
class LayerStats:
    entries: int = 0
    warnings: list[str] = field(default_factory=list)


def _clean(name: str, what: str) -> str:
    """A tar name as a path relative to the root; ``..`` escaping it is an error."""
    if "\x00" in name:
        raise LayerError(f"{what} '{name!r}' contains a NUL byte")
    rel = posixpath.normpath("/" + name.lstrip("/")).lstrip("/")
    if name.lstrip("/") and _escapes(name):
        raise LayerError(f"{what} '{name}' escapes the layer root")
    return rel or "."


def _escapes(name: str) -> bool:
    depth = 0
    for part in name.lstrip("/").split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


class _Root:
    """Resolves paths under one layer root without ever leaving it."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def resolve_dir(self, rel: str, *, create: bool) -> str:
        """The real directory for ``rel`` (following symlinks inside the root)."""
        current = self.root
        hops = 0
        pending = [p for p in rel.split("/") if p not in ("", ".")]
        while pending:
            part = pending.pop(0)
            if part == "..":
                current = self.root if current == self.root else os.path.dirname(current)
                continue
            candidate = os.path.join(current, part)
            try:
                st = os.lstat(candidate)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(candidate, 0o755)
                current = candidate
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise LayerError(f"too many levels of symlinks resolving '{rel}'")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    current = self.root
                pending = [p for p in target.split("/") if p not in ("", ".")] + pending
                continue
            if not stat.S_ISDIR(st.st_mode):
                if not create:
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", candidate)
                os.unlink(candidate)  # a later entry replaces a file with a directory
                os.mkdir(candidate, 0o755)
            current = candidate
        return current

    def entry(self, rel: str, *, create_parents: bool = True) -> str:
        """The path of ``rel`` itself: parents resolved, last component not followed."""
        parent, base = posixpath.split(rel)
        if base in ("", ".", ".."):
            raise LayerError(f"entry '{rel}' has no usable name")
        return os.path.join(self.resolve_dir(parent, create=create_parents), base)


def _remove(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _set_xattrs(path: str, member: tarfile.TarInfo, stats: LayerStats) -> None:
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr.") :]
        if name.startswith(_FORBIDDEN_XATTR_PREFIXES):
            stats.warnings.append(f"{member.name}: ignored xattr {name}")
            continue
        raw = value.encode("utf-8", "surrogateescape")
        try:
            os.setxattr(path, name, raw, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EPERM):
                stats.warnings.append(f"{member.name}: xattr {name} not kept ({exc.strerror})")
            else:
                raise


def _write_file(path: str, member: tarfile.TarInfo, data: _Readable) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if member.sparse:
            # Only the data regions are in the archive; seek over the holes.
            for offset, length in _sparse_map(member):
                _copy(data, fd, length, offset)
            os.ftruncate(fd, member.size)
        else:
            _copy(data, fd, member.size, 0)
    finally:
        os.close(fd)


def _copy(src: _Readable, fd: int, length: int, offset: int) -> None:
    remaining = length
    while remaining:
        chunk = src.read(min(_COPY_CHUNK, remaining))
        if not chunk:
            raise LayerError("layer ends in the middle of a file")
        view = memoryview(chunk)
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
        remaining -= len(chunk)


class _MemberData:
    """Reads a member's raw data straight from the stream (no extra copy).

    Sparse members store only their data regions, back to back; the caller
    asks for them in order, so reading sequentially is right.
    """

    def __init__(self, stream: Any, size: int) -> None:
        self._stream = stream
        self._left = size

    def read(self, n: int) -> bytes:
        n = min(n, self._left)
        if n <= 0:
            return b""
        data: bytes = self._stream.read(n)
        self._left -= len(data)
        return data


def apply_layer(tar_stream: BinaryIO, root: str) -> LayerStats:
    """Extract the (uncompressed) tar read from ``tar_stream`` into ``root``."""
    stats = LayerStats()
    tree = _Root(root)
    opaque_dirs: list[str] = []
    dir_times: list[tuple[str, int]] = []
    try:
        archive = tarfile.open(fileobj=tar_stream, mode="r|", bufsize=1 << 20)  # noqa: SIM115
    except tarfile.ReadError as exc:
        raise LayerError(f"not a tar archive: {exc}") from None
    with archive:
        try:
            for member in archive:
                stats.entries += 1
                try:
                    _apply_member(archive, member, tree, stats, opaque_dirs, dir_times)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or exc.errno is None:
                        raise  # out of space, or the compressed stream itself is corrupt
                    raise LayerError(f"entry '{member.name}': {exc.strerror}") from None
        except (tarfile.ReadError, tarfile.HeaderError, EOFError) as exc:
            raise LayerError(f"corrupt or truncated tar: {exc}") from None
    for rel in opaque_dirs:
        path = tree.resolve_dir(rel, create=True)
        os.setxattr(path, "trusted.overlay.opaque", b"y", follow_symlinks=False)
    # Directory mtimes last: creating their children changed them.
    for path, mtime_ns in reversed(dir_times):
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    return stats


def _apply_member(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    tree: _Root,
    stats: LayerStats,
    opaque_dirs: list[str],
    dir_times: list[tuple[str, int]],
) -> None:
    rel = _clean(member.name, "entry")
    base = posixpath.basename(rel)
    if base.startswith(WHITEOUT_PREFIX):
        _whiteout(member, rel, base, tree, opaque_dirs)
        return
    # "./" carries the root directory's own metadata.
    path = tree.root if rel == "." else tree.entry(rel)
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    if (
        existing is not None
        and rel != "."
        and not (member.isdir() and stat.S_ISDIR(existing.st_mode))
    ):
        _remove(path)  # a later entry for the same path replaces the earlier one

    mode = member.mode & 0o7777
    mtime_ns = int(member.mtime) * 1_000_000_000
    if member.isdir():
        if not os.path.lexists(path):
            os.mkdir(path, 0o700)
        dir_times.append((path, mtime_ns))
    elif member.isreg():
        assert archive.fileobj is not None
        _write_file(path, member, _MemberData(archive.fileobj, _stored_size(member)))
    elif member.issym():
        os.symlink(member.linkname, path)
    elif member.islnk():
        target_rel = _clean(member.linkname, "hardlink target")
        if target_rel == ".":
            raise LayerError(f"hardlink '{member.name}' points at the layer root")
        target = tree.entry(target_rel, create_parents=False)
        try:
            target_st = os.lstat(target)
        except FileNotFoundError:
            raise LayerError(
                f"hardlink '{member.name}' points at '{member.linkname}', not in this layer"
            ) from None
        if stat.S_ISDIR(target_st.st_mode):
            raise LayerError(f"hardlink '{member.name}' points at a directory")
        os.link(target, path, follow_symlinks=False)
        return  # the link shares the target's inode and metadata
    elif member.ischr() or member.isblk():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        try:
            os.mknod(path, kind | mode, os.makedev(member.devmajor, member.devminor))
        except PermissionError:
            stats.warnings.append(f"{member.name}: device node not created (not permitted)")
            return
    elif member.isfifo():
        os.mkfifo(path, mode)
    else:
        stats.warnings.append(f"{member.name}: unsupported tar entry type {member.type!r} skipped")
        return

    os.chown(path, member.uid, member.gid, follow_symlinks=False)
    if not member.issym():
        os.chmod(path, mode)  # after chown, which clears set-id bits
    _set_xattrs(path, member, stats)
    if not member.isdir():
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def _stored_size(member: tarfile.TarInfo) -> int:
    """Bytes of data the archive holds for a regular file (less than size if sparse)."""
    if member.sparse:
        return sum(length for _, length in _sparse_map(member))
    return member.size


def _whiteout(
    member: tarfile.TarInfo, rel: str, base: str, tree: _Root, opaque_dirs: list[str]
) -> None:
    parent = posixpath.dirname(rel)
    if base == OPAQUE_MARKER:
        opaque_dirs.append(parent)
        return
    hidden = base[len(WHITEOUT_PREFIX) :]
    if hidden in ("", ".", "..") or hidden.startswith(WHITEOUT_PREFIX):
        raise LayerError(f"whiteout '{member.name}' names an invalid entry")
    path = os.path.join(tree.resolve_dir(parent, create=True), hidden)
    if os.path.lexists(path):
        return  # whiteouts hide lower layers only; this layer's own entry stays
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.chown(path, member.uid, member.gid, follow_symlinks=False)


def disk_usage(root: str) -> tuple[int, int]:
    """``(bytes allocated, inodes)`` of a tree, each hardlinked inode counted once."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, None]:
            path = dirpath if name is None else os.path.join(dirpath, name)
            if name is not None and name in dirnames:
                continue  # directories are counted when walked (name is None)
            st = os.lstat(path)
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += st.st_blocks * 512
    return total, len(seen)
