"""Count file creations in directories with Linux inotify (through libc, no dependency).

The kubelet's plugin watcher reacts to fsnotify create events. A socket removed and
created again can get the same inode and, within one clock tick, the same ctime, so a
stat-based scan alone could miss that a plugin re-registered; a creation count cannot.
Imports nothing of agent/.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from collections import Counter

__all__ = ["CreationCounter"]

IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the NUL-padded name

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class CreationCounter:
    """How often each path under the watched directories was created (or moved in)."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd: int = fd
        self.created: Counter[str] = Counter()
        self._dirs: dict[int, str] = {}
        self._watched: set[str] = set()

    def watch(self, directory: str) -> None:
        """Watch ``directory`` (again is a no-op); creations from now on are counted."""
        if directory in self._watched:
            return
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_CREATE | IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory} failed")
        self._dirs[wd] = directory
        self._watched.add(directory)

    def drain(self) -> None:
        """Count every event queued so far."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                directory = self._dirs.get(wd)
                if directory is not None and name:
                    path = os.path.join(directory, os.fsdecode(name))
                    self.created[path] += 1
                    if mask & IN_ISDIR:
                        self._watched.discard(path)  # a new directory: watch it on the next scan

    def close(self) -> None:
        os.close(self.fd)
