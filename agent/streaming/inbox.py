"""Bounded inbound byte queues: what a connection holds for readers that have not read it yet.

Neither SPDY/3.1 as Go's spdystream speaks it (no flow control) nor the ``channel.k8s.io``
WebSocket protocols give a server a way to tell a client to slow down, so the only bound a
server can put on what a client makes it hold is to stop reading the client's socket; TCP
then pushes back. Each stream (SPDY) or input channel (WebSocket) gets an ``Inbox``; all of a
connection's inboxes share one ``InboxBudget``. The connection's reader feeds a piece of at
most ``READ_PIECE`` bytes, then waits for ``room()`` before it reads on, so one connection
holds at most its budget plus one piece, however many streams or messages it opens.

While it waits, the connection sends the peer a ping every ``STALL_PING_INTERVAL``
seconds (``wait_for_room``): a peer that went away answers with a TCP reset, which ends the
connection; one that is there but never lets the readers on is cut off at the idle timeout.

An inbox whose reader will never read again (a stream the server only writes to, a stdin
the process closed, a finished port-forward) is ``discard()``-ed: what it held is released
and what comes later is dropped unread, so it can neither hold memory nor stall the others.

Imports nothing from the rest of the agent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = [
    "CONNECTION_BUFFER_LIMIT",
    "INBOX_BUFFER_LIMIT",
    "READ_PIECE",
    "STALL_PING_INTERVAL",
    "Inbox",
    "InboxBudget",
    "wait_for_room",
]

#: The most one read from a client's socket, or one piece of a frame, may be.
READ_PIECE = 64 * 1024
#: Unread bytes one stream or channel may hold before its connection stops reading.
INBOX_BUFFER_LIMIT = 1 << 20
#: Unread bytes all the streams or channels of one connection may hold together.
CONNECTION_BUFFER_LIMIT = 4 << 20
#: Seconds between the pings a connection sends while it waits for its readers.
STALL_PING_INTERVAL = 2.0


class InboxBudget:
    """The bytes every inbox of one connection holds, against one limit."""

    def __init__(self, limit: int = CONNECTION_BUFFER_LIMIT) -> None:
        self.limit = limit
        self.used = 0
        self._room = asyncio.Event()
        self._room.set()

    def _charge(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            self._room.clear()

    def _release(self, size: int) -> None:
        self.used -= size
        if self.used <= self.limit:
            self._room.set()

    async def room(self) -> None:
        await self._room.wait()


class Inbox:
    """One reader's queue of chunks: fed by the connection, read by a session."""

    def __init__(self, budget: InboxBudget, limit: int = INBOX_BUFFER_LIMIT) -> None:
        self._budget = budget
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        #: no more data will come (the peer's EOF, a reset, the connection's end)
        self.ended = False
        #: the reader is gone: data is dropped on arrival
        self.discarding = False

    # -- the connection's side ---------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data or self.ended or self.discarding:
            return
        self._chunks.append(data)
        self.buffered += len(data)
        self._budget._charge(len(data))
        if self.buffered > self._limit:
            self._room.clear()
        self._readable.set()

    def end(self) -> None:
        """No more data; what is buffered can still be read."""
        self.ended = True
        self._readable.set()

    def abort(self) -> None:
        """No more data and none of what is buffered: the stream or connection died."""
        self.ended = True
        self._drop()
        self._readable.set()

    @property
    def has_room(self) -> bool:
        return self._room.is_set() and self._budget._room.is_set()

    @property
    def room_left(self) -> int:
        """Bytes this inbox can take before it or its connection is over its limit."""
        return max(0, min(self._limit - self.buffered, self._budget.limit - self._budget.used))

    async def room(self) -> None:
        """Until this inbox and its connection are under their limits again."""
        await self._room.wait()
        await self._budget.room()

    # -- the reader's side -------------------------------------------------------------

    async def read(self) -> bytes:
        """The next chunk; b"" once the inbox ended (or was discarded) and is empty."""
        while not self._chunks:
            if self.ended or self.discarding:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        self._take(len(data))
        return data

    def discard(self) -> None:
        """The reader will not read again: release what is held, drop what comes."""
        self.discarding = True
        self._drop()
        self._readable.set()

    @property
    def empty(self) -> bool:
        return not self._chunks

    def _drop(self) -> None:
        self._chunks.clear()
        self._take(self.buffered)

    def _take(self, size: int) -> None:
        if not size:
            return
        self.buffered -= size
        self._budget._release(size)
        if self.buffered <= self._limit:
            self._room.set()


async def wait_for_room(
    inbox: Inbox, ping: Callable[[], Awaitable[None]], idle_timeout: float
) -> None:
    """Until ``inbox`` has room; ``ping()`` the peer meanwhile (it raises ``ConnectionError``
    once the peer is gone). ``TimeoutError`` after ``idle_timeout`` without room."""
    if inbox.has_room:  # the common case, and a timer per piece is not free
        return
    waited = 0.0
    while True:
        try:
            await asyncio.wait_for(inbox.room(), STALL_PING_INTERVAL)
            return
        except TimeoutError:
            waited += STALL_PING_INTERVAL
            if waited >= idle_timeout:
                raise
        await ping()
