"""Deleting image data in the background: rename into a trash dir now, delete later.

Deleting a multi-GB snapshot takes seconds to minutes; nothing may wait for it.
Removal therefore only renames what goes into ``<store>/.trash/`` (atomic, and
instant whatever the size), and one background thread deletes the trash file
by file. So:

* a removal is complete the moment its renames are done: a client deadline or
  a crash cannot leave a snapshot half-deleted under a live name, and a pull of
  the same image right after never meets the old directories;
* a crash while deleting leaves the rest in the trash, which the next start
  drains again (resumable), after the agent reports ready;
* until the bytes are gone ``pending`` counts them, so ``ImageFsInfo`` keeps
  reporting the disk the trash still holds.

The janitor (:meth:`Trash.drain`) deletes one entry at a time in one thread
(bounded: never a thread per entry, never the event loop) and logs what it
freed. This module imports nothing from the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence

__all__ = ["Trash", "drain"]

log = logging.getLogger(__name__)

TRASH_DIR = ".trash"


class Trash:
    """The trash directory of one store (it must be on the store's filesystem)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        #: entry name -> (bytes, inodes) still on disk; None until measured
        self._usage: dict[str, tuple[int, int] | None] = {}
        for name in os.listdir(directory):
            self._usage[name] = None  # left by an earlier run: measured before deleting
        #: entries that could not be deleted this run (retried at the next start)
        self._failed: set[str] = set()
        self._stop = threading.Event()

    def put(self, path: str, usage: tuple[int, int] | None = None) -> bool:
        """Move ``path`` (a file or directory) into the trash; False if it was not there.

        ``usage`` is ``(bytes, inodes)`` when the caller knows it (a snapshot
        record); otherwise the janitor measures it before deleting.
        """
        name = f"{os.path.basename(path.rstrip('/'))}-{secrets.token_hex(4)}"
        try:
            os.rename(path, os.path.join(self.directory, name))
        except FileNotFoundError:
            return False
        with self._lock:
            self._usage[name] = usage
        return True

    @property
    def pending(self) -> tuple[int, int]:
        """``(bytes, inodes)`` the trash still holds, as far as measured."""
        with self._lock:
            known = [u for u in self._usage.values() if u is not None]
        return sum(u[0] for u in known), sum(u[1] for u in known)

    def __len__(self) -> int:
        """Entries still to delete this run (one that failed waits for the next start)."""
        with self._lock:
            return len(self._usage.keys() - self._failed)

    def stop(self) -> None:
        """Make a running :meth:`empty` return soon (the agent is stopping)."""
        self._stop.set()

    def empty(self) -> tuple[int, int]:
        """Delete everything in the trash (blocking; run in a thread). ``(bytes, entries)``."""
        freed = entries = 0
        while not self._stop.is_set():
            with self._lock:
                todo = sorted(self._usage.keys() - self._failed)
            if not todo:
                break
            for name in todo:
                if self._usage.get(name) is None:
                    self._measure(name)
            for name in todo:
                if self._stop.is_set():
                    break
                freed += self._delete(name)
                entries += 1
        return freed, entries

    def _measure(self, name: str) -> None:
        path = os.path.join(self.directory, name)
        total = inodes = 0
        for st in _walk_stats(path):
            total += st.st_blocks * 512
            inodes += 1
        with self._lock:
            if name in self._usage:
                self._usage[name] = (total, inodes)

    def _delete(self, name: str) -> int:
        """Delete one entry bottom-up, counting down ``pending`` as it goes."""
        path = os.path.join(self.directory, name)
        freed = 0

        def gone(st: os.stat_result) -> None:
            nonlocal freed
            freed += st.st_blocks * 512
            with self._lock:
                usage = self._usage.get(name)
                if usage is not None:
                    self._usage[name] = (
                        max(0, usage[0] - st.st_blocks * 512),
                        max(0, usage[1] - 1),
                    )

        try:
            _remove_tree(path, gone, self._stop)
        except OSError as exc:
            # What is left still takes the disk: it stays counted, and is retried next start.
            log.warning("trash: cannot delete %s: %s (left for the next start)", path, exc)
            with self._lock:
                self._failed.add(name)
            return freed
        if not os.path.lexists(path):
            with self._lock:
                self._usage.pop(name, None)
        return freed


def _walk_stats(path: str) -> list[os.stat_result]:
    result = []
    with contextlib.suppress(FileNotFoundError):
        top = os.lstat(path)
        result.append(top)
        if stat.S_ISDIR(top.st_mode):
            for dirpath, dirnames, filenames in os.walk(path):
                for entry in (*dirnames, *filenames):
                    with contextlib.suppress(FileNotFoundError):
                        result.append(os.lstat(os.path.join(dirpath, entry)))
    return result


def _remove_tree(path: str, gone: Callable[[os.stat_result], None], stop: threading.Event) -> None:
    """``rm -rf path`` that reports each removed inode, deletes all it can when something
    cannot be deleted (then raises the first error), and stops when asked."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        os.unlink(path)
        gone(top)
        return
    first_error: OSError | None = None
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for entry in (*filenames, *dirnames):
            if stop.is_set():
                return
            child = os.path.join(dirpath, entry)
            try:
                st = os.lstat(child)
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(child)
                else:
                    os.unlink(child)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:  # a parent of what failed: not news
                    first_error = first_error or exc
                continue
            gone(st)
    if first_error is not None:
        raise first_error
    os.rmdir(path)
    gone(top)


async def drain(trashes: Sequence[Trash], wake: asyncio.Event) -> None:
    """The janitor: empty every trash whenever ``wake`` is set, until cancelled."""
    while True:
        await wake.wait()
        wake.clear()
        if not any(len(t) for t in trashes):
            continue
        started = time.monotonic()
        freed = entries = 0
        for trash in trashes:
            count = len(trash)
            if count:
                log.info("deleting %d removed image entries from %s", count, trash.directory)
            done = await asyncio.to_thread(trash.empty)
            freed += done[0]
            entries += done[1]
        if entries:
            log.info(
                "deleted %d removed image entries (%.1f MB) in %.1fs",
                entries,
                freed / 1e6,
                time.monotonic() - started,
            )
