"""The one lock that orders changes to the image store: commits, saves, removals.

A pull that finds a layer present, a pull committing a snapshot, a removal
deciding what no image uses: each reads and changes records and directories
together, so they take this lock in turn. Their blocking work (SQLite commits
that fsync, renames) runs in a thread while the lock is held, and runs to its
end even if the caller is cancelled (a client deadline): a critical section
is never left half done, and the lock is released only when it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

__all__ = ["StoreLock"]

T = TypeVar("T")


class StoreLock:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold the lock for work on the event loop (no awaits that may be cut short)."""
        async with self._lock:
            yield

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a thread under the lock; once started it finishes whatever
        the caller does (a caller cancelled while waiting for the lock starts nothing)."""
        await self._lock.acquire()
        try:
            work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        except BaseException:
            self._lock.release()
            raise
        work.add_done_callback(self._finished)
        return await asyncio.shield(work)

    def _finished(self, work: asyncio.Future[Any]) -> None:
        self._lock.release()
        if not work.cancelled():
            work.exception()  # retrieved: a caller that went away must not leave it unread
