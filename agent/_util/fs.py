"""Crash-safe file helpers: a write is either complete on disk or absent."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = [
    "atomic_write",
    "atomic_write_json",
    "disk_usage",
    "ensure_dir",
    "fsync_dir",
    "read_kernel_file",
]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename + dir fsync.

    ``durable=False`` skips the fsyncs: the file is still never seen half-written (by
    another process, or after the agent crashed), only a power loss may lose it. For
    files that do not outlive a reboot anyway (a bundle's spec, a pod's /etc/hosts).
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(directory)


def atomic_write_json(path: str, obj: Any, *, mode: int = 0o644, durable: bool = True) -> None:
    data = json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"
    atomic_write(path, data, mode=mode, durable=durable)


def ensure_dir(path: str, mode: int) -> None:
    """Create ``path`` (and parents) and force its mode, even if it existed."""
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)


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


_KERNEL_READ_SIZE = 1 << 16


def read_kernel_file(path: str) -> str:
    """A whole small ``/proc`` or ``/sys`` file (a cgroup counter, ``/proc/<pid>/cgroup``).

    ``os.read`` rather than ``open()``: a metrics scrape reads thousands of these, and
    a text file object costs about three times the read itself.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _KERNEL_READ_SIZE)
        if len(data) == _KERNEL_READ_SIZE:  # rare (many block devices): read the rest
            chunks = [data]
            while chunk := os.read(fd, _KERNEL_READ_SIZE):
                chunks.append(chunk)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    return data.decode()
