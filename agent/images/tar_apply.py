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

This module runs inside the unpack worker process, never on the event loop;
it imports nothing from the agent (the worker starts in tens of milliseconds).
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from typing import Any, cast

__all__ = ["LayerError", "LayerStats", "LimitExceeded", "TarSource", "apply_layer"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_MAX_SYMLINK_HOPS = 40
_COPY_CHUNK = 1 << 20
#: xattrs a layer may not set: they would steer overlayfs, not describe a file.
_FORBIDDEN_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


def _sparse_map(member: tarfile.TarInfo) -> list[tuple[int, int]]:
    """``(offset, length)`` data regions of a sparse member (typeshed types it loosely)."""
    return cast(list[tuple[int, int]], member.sparse or [])


class LayerError(Exception):
    """The layer cannot be applied safely; the message names the entry.

    A plain exception: this module runs in the unpack worker, which imports
    nothing heavy; the agent answers the failure as ``INVALID_ARGUMENT``.
    """


class LimitExceeded(Exception):
    """The layer is bigger than the node allows (bytes or entries); the message names the key."""


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
        #: resolved directories; valid until a symlink appears or a directory goes
        self._dirs: dict[str, str] = {}

    def forget(self) -> None:
        """Drop cached resolutions (a symlink or directory changed)."""
        self._dirs.clear()

    def remove(self, path: str) -> None:
        """Remove what an earlier entry put at ``path`` (a directory with its contents)."""
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
            self.forget()
        else:
            os.unlink(path)

    def resolve_dir(self, rel: str, *, create: bool) -> str:
        """The real directory for ``rel`` (following symlinks inside the root)."""
        cached = self._dirs.get(rel)
        if cached is not None:
            return cached
        resolved = self._resolve_dir(rel, create=create)
        self._dirs[rel] = resolved
        return resolved

    def _resolve_dir(self, rel: str, *, create: bool) -> str:
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


def _create_file(tree: _Root, path: str, mode: int) -> int:
    """An fd for a new file at ``path``, replacing whatever a previous entry left there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        tree.remove(path)
        return os.open(path, flags, mode)


def _copy(src: _MemberData, fd: int, length: int, offset: int) -> None:
    remaining = length
    while remaining:
        view = src.read_view(min(_COPY_CHUNK, remaining))
        if not view:
            raise LayerError("layer ends in the middle of a file")
        remaining -= len(view)
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written


class _MemberData:
    """A member's stored bytes, read as views of the stream's buffer (no copy).

    Sparse members store only their data regions, back to back; the caller
    asks for them in order, so reading sequentially is right.
    """

    def __init__(self, source: TarSource, size: int) -> None:
        self._source = source
        self._left = size

    def read_view(self, n: int) -> memoryview:
        n = min(n, self._left)
        if n <= 0:
            return memoryview(b"")
        view = self._source.read_view(n)
        self._left -= len(view)
        return view


class TarSource:
    """An uncompressed tar stream for ``tarfile``'s plain (seekable) mode.

    ``tarfile``'s streaming mode re-joins its buffer on every read; here reads
    slice the producer's chunks, ``seek`` only moves forward (skipping bytes),
    and file data can be taken as views without copying.
    """

    def __init__(self, read_chunk: Any) -> None:
        self._read_chunk = read_chunk  # () -> bytes, b"" at the end
        self._chunk = memoryview(b"")
        self._position = 0
        self._eof = False

    def _fill(self) -> bool:
        while not self._chunk:
            if self._eof:
                return False
            data = self._read_chunk()
            if not data:
                self._eof = True
                return False
            self._chunk = memoryview(data)
        return True

    def read_view(self, n: int) -> memoryview:
        if n <= 0 or not self._fill():
            return memoryview(b"")
        view, self._chunk = self._chunk[:n], self._chunk[n:]
        self._position += len(view)
        return view

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = 1 << 62
        parts = []
        while n > 0:
            view = self.read_view(n)
            if not view:
                break
            parts.append(view)
            n -= len(view)
        return b"".join(parts)

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self._position + offset
        if whence not in (0, 1) or target < self._position:
            raise io.UnsupportedOperation("a layer stream only moves forward")
        while self._position < target and self.read_view(target - self._position):
            pass
        return self._position


def apply_layer(source: TarSource, root: str, *, max_entries: int = 0) -> LayerStats:
    """Extract the (uncompressed) tar read from ``source`` into ``root``.

    Files are created with their final permission bits, so the process must
    run with umask 0 (the unpack worker does). More than ``max_entries`` tar
    entries (0: no limit) raise :class:`LimitExceeded`.
    """
    stats = LayerStats()
    tree = _Root(root)
    opaque_dirs: list[str] = []
    dir_times: list[tuple[str, int]] = []
    try:
        archive = tarfile.TarFile(fileobj=source, mode="r")  # type: ignore[arg-type]
    except tarfile.ReadError as exc:
        raise LayerError(f"not a tar archive: {exc}") from None
    with archive:
        try:
            for member in archive:
                stats.entries += 1
                if max_entries and stats.entries > max_entries:
                    raise LimitExceeded(
                        f"the layer has more than {max_entries} entries (image.max_layer_entries)"
                    )
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
    mode = member.mode & 0o7777
    mtime_ns = int(member.mtime) * 1_000_000_000
    owned = member.uid != 0 or member.gid != 0  # new files already belong to root
    if member.isreg():
        fd = _create_file(tree, path, mode & 0o777)
        try:
            source = cast(TarSource, archive.fileobj)
            if source.tell() < member.offset_data:
                source.seek(member.offset_data)
            data = _MemberData(source, _stored_size(member))
            if member.sparse:
                for offset, length in _sparse_map(member):
                    _copy(data, fd, length, offset)  # holes stay holes
                os.ftruncate(fd, member.size)
            else:
                _copy(data, fd, member.size, 0)
            if owned:
                os.fchown(fd, member.uid, member.gid)
            if mode & 0o7000:
                os.fchmod(fd, mode)  # after chown, which clears set-id bits
            if member.pax_headers:
                _set_xattrs(path, member, stats)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        return
    if member.isdir():
        if rel != ".":
            try:
                os.mkdir(path, mode & 0o777)
            except FileExistsError:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    os.chmod(path, mode & 0o777)  # made earlier as a parent, or repeated
                else:
                    tree.remove(path)
                    os.mkdir(path, mode & 0o777)
        dir_times.append((path, mtime_ns))
    elif member.issym():
        _replace(tree, path, lambda: os.symlink(member.linkname, path))
        tree.forget()  # directories below this name now resolve elsewhere
    elif member.islnk():
        target_rel = _clean(member.linkname, "hardlink target")
        if target_rel == ".":
            raise LayerError(f"hardlink '{member.name}' points at the layer root")
        try:
            target = tree.entry(target_rel, create_parents=False)
            target_st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            raise LayerError(
                f"hardlink '{member.name}' points at '{member.linkname}', not in this layer"
            ) from None
        if stat.S_ISDIR(target_st.st_mode):
            raise LayerError(f"hardlink '{member.name}' points at a directory")
        if target != path:
            _replace(tree, path, lambda: os.link(target, path, follow_symlinks=False))
        return  # the link shares the target's inode and metadata
    elif member.ischr() or member.isblk():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        device = os.makedev(member.devmajor, member.devminor)
        try:
            _replace(tree, path, lambda: os.mknod(path, kind | (mode & 0o777), device))
        except PermissionError:
            stats.warnings.append(f"{member.name}: device node not created (not permitted)")
            return
    elif member.isfifo():
        _replace(tree, path, lambda: os.mkfifo(path, mode & 0o777))
    else:
        stats.warnings.append(f"{member.name}: unsupported tar entry type {member.type!r} skipped")
        return

    if owned:
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
    if mode & 0o7000 and not member.issym():
        os.chmod(path, mode)
    if member.pax_headers:
        _set_xattrs(path, member, stats)
    if not member.isdir():
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    elif rel == ".":
        os.chmod(path, mode)


def _replace(tree: _Root, path: str, create: Any) -> None:
    """Run ``create()``; if ``path`` exists (an earlier entry), remove it and retry."""
    try:
        create()
    except FileExistsError:
        tree.remove(path)
        create()


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
    try:
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    except FileExistsError:
        return  # whiteouts hide lower layers only; this layer's own entry stays
    if member.uid or member.gid:
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
