"""Crash-safe file helpers: a write is either complete on disk or absent."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["atomic_write", "atomic_write_json", "ensure_dir", "fsync_dir"]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename + dir fsync."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


def atomic_write_json(path: str, obj: Any, *, mode: int = 0o644) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n", mode=mode)


def ensure_dir(path: str, mode: int) -> None:
    """Create ``path`` (and parents) and force its mode, even if it existed."""
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)
