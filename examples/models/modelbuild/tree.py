"""Directory trees to reproducible layer tars: a whole tree, or what changed over another.

Owns the rules that make a rootfs directory an OCI layer: entries in sorted order, PAX
format, numeric owners without names, mtimes clamped to ``SOURCE_DATE_EPOCH``, hard links
kept within a layer, ``security.capability`` xattrs kept, and the runtime's own places
(``/dev``, ``/proc``, ``/sys``, ``/run``, ``/tmp``, apt's lists and caches) kept as empty
directories. A diff layer holds every entry that is new or changed in the upper tree
(with its parent directories) and an OCI whiteout for every path that disappeared.

Same input bytes, same tar bytes: that is what makes image digests reproducible.
Must not import ``oci`` or ``rootfs``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "EMPTIED",
    "EMPTY_FILES",
    "Entry",
    "diff_paths",
    "scan",
    "write_tar",
]

#: Directories whose contents never go into a layer (the directory itself does).
EMPTIED = (
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "var/tmp",
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log",
)
#: Files the runtime bind-mounts over; the bootstrap copied the build host's into them.
EMPTY_FILES = ("etc/hostname", "etc/resolv.conf")
_KEPT_XATTRS = ("security.capability",)


@dataclass(frozen=True)
class Entry:
    """One path of a tree (relative, no leading slash) and its ``lstat``."""

    path: str
    st: os.stat_result

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.st.st_mode)


def _emptied(path: str) -> bool:
    return any(path.startswith(prefix + "/") for prefix in EMPTIED)


def scan(root: str) -> dict[str, Entry]:
    """Every path under ``root`` that belongs in a layer, by relative path."""
    entries: dict[str, Entry] = {}
    root = os.path.abspath(root)
    for directory, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(directory, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        kept = []
        for name in sorted(dirnames + filenames):
            path = f"{rel_dir}/{name}" if rel_dir else name
            if _emptied(path):
                continue
            st = os.lstat(os.path.join(root, path))
            entries[path] = Entry(path, st)
            if stat.S_ISDIR(st.st_mode) and name in dirnames:
                kept.append(name)
        dirnames[:] = kept  # os.walk does not follow symlinked directories
    return entries


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _same(lower_root: str, lower: Entry, upper_root: str, upper: Entry) -> bool:
    a, b = lower.st, upper.st
    if (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid):
        return False
    if stat.S_ISDIR(a.st_mode):
        return True  # a directory's entries are compared one by one
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(os.path.join(lower_root, lower.path)) == os.readlink(
            os.path.join(upper_root, upper.path)
        )
    if stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode):
        return a.st_rdev == b.st_rdev
    if a.st_size != b.st_size:
        return False
    if a.st_mtime_ns == b.st_mtime_ns:
        return True  # both unpacked from the same package file
    return _sha256(os.path.join(lower_root, lower.path)) == _sha256(
        os.path.join(upper_root, upper.path)
    )


def diff_paths(
    lower_root: str, lower: Mapping[str, Entry], upper_root: str, upper: Mapping[str, Entry]
) -> tuple[list[str], list[str]]:
    """(paths of ``upper`` to write, with their parent dirs; paths to white out)."""
    changed: set[str] = set()
    for path, entry in upper.items():
        old = lower.get(path)
        if old is None or not _same(lower_root, old, upper_root, entry):
            changed.add(path)
    for path in list(changed):
        parent = os.path.dirname(path)
        while parent and parent not in changed:
            changed.add(parent)
            parent = os.path.dirname(parent)
    removed = [
        path
        for path in lower
        if path not in upper and (os.path.dirname(path) == "" or os.path.dirname(path) in upper)
    ]
    # A removed directory's own whiteout hides its children: only the topmost is needed.
    removed_set = set(removed)
    topmost = [p for p in removed if os.path.dirname(p) not in removed_set]
    return sorted(changed), sorted(topmost)


def _xattrs(path: str) -> dict[str, str]:
    found = {}
    for name in _KEPT_XATTRS:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        found[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return found


def write_tar(
    root: str,
    paths: Iterable[str],
    out: str,
    *,
    epoch: int,
    whiteouts: Iterable[str] = (),
    extra_dirs: Iterable[str] = EMPTIED,
) -> None:
    """Write the layer tar ``out`` of ``paths`` under ``root`` (plus ``whiteouts``).

    ``extra_dirs`` that exist under ``root`` are written as directories even if absent
    from ``paths`` (the emptied places, so the image has its mount points).
    """
    root = os.path.abspath(root)
    wanted = set(paths)
    for directory in extra_dirs:
        if os.path.isdir(os.path.join(root, directory)) and not os.path.islink(
            os.path.join(root, directory)
        ):
            wanted.add(directory)
    links: dict[tuple[int, int], str] = {}
    names = sorted(
        wanted | {f"{os.path.dirname(p)}/.wh.{os.path.basename(p)}".lstrip("/") for p in whiteouts}
    )
    whiteout_names = {n for n in names if os.path.basename(n).startswith(".wh.")}
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            if name in whiteout_names and name not in wanted:
                info = tarfile.TarInfo(name)
                info.mtime = epoch
                info.mode = 0o644
                tar.addfile(info)
                continue
            full = os.path.join(root, name)
            st = os.lstat(full)
            info = tarfile.TarInfo(name)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            info.mtime = min(int(st.st_mtime), epoch)
            info.pax_headers = _xattrs(full)
            data = None
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    info.type = tarfile.LNKTYPE
                    info.linkname = links[key]
                else:
                    links[key] = name
                    info.type = tarfile.REGTYPE
                    info.size = 0 if name in EMPTY_FILES else st.st_size
                    data = None if name in EMPTY_FILES else full
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
            else:
                continue  # sockets do not belong in images
            if data is None:
                tar.addfile(info)
            else:
                with open(data, "rb") as f:
                    tar.addfile(info, f)
    os.replace(tmp, out)
