"""Notice container exits as conmon records them: inotify on the exit directory.

conmon writes ``<exit_dir>/<container id>`` with the exit code when a
container ends. The watcher turns each new file into a callback on the event
loop within milliseconds; a periodic rescan (cheap: one ``listdir``) covers
the rare event the kernel drops when its queue overflows.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Callable

__all__ = ["ExitWatcher"]

log = logging.getLogger(__name__)

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_Q_OVERFLOW = 0x00004000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")
_RESCAN_SECONDS = 5.0


class ExitWatcher:
    """Calls ``on_exit(container_id)`` for every exit file written in ``directory``."""

    def __init__(self, directory: str, on_exit: Callable[[str], None]) -> None:
        self._directory = directory
        self._on_exit = on_exit
        self._fd = -1
        self._rescan: asyncio.Task[None] | None = None

    def start(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if (
            libc.inotify_add_watch(fd, os.fsencode(self._directory), _IN_CLOSE_WRITE | _IN_MOVED_TO)
            < 0
        ):
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {self._directory} failed")
        self._fd = fd
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._read)
        self._rescan = loop.create_task(self._rescan_loop())

    def stop(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._rescan is not None:
            self._rescan.cancel()
            self._rescan = None

    @property
    def running(self) -> bool:
        return self._fd >= 0

    def drain(self) -> bool:
        """Report the exits the kernel has queued, now (a list wants current records).

        Whether the watcher runs: if it does, every exit file present has been
        reported once this returns (the kernel queues the event as the file
        appears), so nobody needs to look for one.
        """
        if self._fd < 0:
            return False
        while self._read():
            pass
        return True

    def _read(self) -> bool:
        """Handle one read of queued events; whether there were any."""
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.EINTR:
                log.error("reading inotify events: %s", exc)
            return False
        offset = 0
        while offset + _EVENT.size <= len(data):
            _, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & _IN_Q_OVERFLOW:
                self.scan()
            elif name and not name.startswith(b"."):
                self._notify(os.fsdecode(name))
        return bool(data)

    def scan(self) -> None:
        """Report every exit file present (startup, and after a lost event)."""
        try:
            names = os.listdir(self._directory)
        except FileNotFoundError:
            return
        for name in names:
            if not name.startswith("."):
                self._notify(name)

    def _notify(self, container_id: str) -> None:
        try:
            self._on_exit(container_id)
        except Exception:
            log.exception("handling the exit of %s", container_id)

    async def _rescan_loop(self) -> None:
        while True:
            await asyncio.sleep(_RESCAN_SECONDS)
            self.scan()
