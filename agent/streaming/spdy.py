"""SPDY/3.1 framing and connections, as Go's spdystream speaks it.

kubectl, crictl and the apiserver reach exec/attach/port-forward over SPDY/3.1
(after an HTTP/1.1 ``Upgrade``); no maintained Python library exists, so this
is ours. What Go peers expect (protocols.md §3.4):

* control frames: ``1|version=3|type``, ``flags|length(24)``; data frames:
  ``0|stream id``, ``flags|length``; FIN = 0x01;
* header blocks: ``count(32)`` then ``len(32) name len(32) value`` pairs,
  compressed by one zlib stream per direction primed with the SPDY/3
  dictionary, flushed with SYNC_FLUSH after each block;
* stream ids: odd from the client, even from the server; a SYN_REPLY must
  precede any DATA on a stream; PINGs with the peer's parity are echoed;
  SETTINGS and WINDOW_UPDATE are read and ignored (no flow control);
  ``close()`` sends GOAWAY.

Anything malformed (wrong version, a header block that does not decompress,
a frame whose length does not fit its type) ends the connection with
GOAWAY(PROTOCOL_ERROR); nothing a peer sends can crash the agent.

Memory: a stream the owner's ``accept`` filter does not want is refused with
RST_STREAM(REFUSED_STREAM) before it exists, and its DATA is dropped unread.
A DATA frame (up to 16 MiB) is read in ``READ_PIECE`` pieces into its
stream's ``Inbox``; when a stream or the whole connection holds its limit of
unread data, the connection stops reading (TCP pushes back on the sender;
while it waits it PINGs the peer now and then, so a peer that went away is
noticed). When the peer ends the connection cleanly (GOAWAY, or EOF) what its
streams already received stays readable: a server's last words (the exit
status on the error stream) come just before it closes. A reset, a protocol
error or ``close()`` aborts every stream and releases what it held.

Size: the framing, the header compression and one connection's state machine
share the frame layout; the memory bounds are in ``inbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import zlib
from collections.abc import Callable

from agent.streaming.dictionary import DICTIONARY
from agent.streaming.inbox import READ_PIECE, Inbox, InboxBudget, wait_for_room

__all__ = [
    "FLAG_FIN",
    "ProtocolError",
    "SpdyConnection",
    "SpdyStream",
    "decode_headers",
    "encode_headers",
]

log = logging.getLogger(__name__)

VERSION = 3
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9
RST_PROTOCOL_ERROR, RST_INVALID_STREAM, RST_REFUSED_STREAM = 1, 2, 3
RST_CANCEL, RST_STREAM_IN_USE = 5, 8
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, GOAWAY_INTERNAL_ERROR = 0, 1, 2
_CONTROL_TYPES = frozenset(
    {SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE}
)

#: Data we send per frame (Go's readers take any size up to 2^24-1).
MAX_SEND_CHUNK = 64 * 1024
#: A header block larger than this (compressed or not) is hostile.
MAX_HEADER_BLOCK = 256 * 1024
#: Header pairs per block (the streaming protocols send three).
MAX_HEADER_PAIRS = 64
#: Open streams per connection; more are refused (RST_STREAM REFUSED_STREAM).
MAX_STREAMS = 4096
_HEADER = struct.Struct(">II")


class ProtocolError(Exception):
    """The peer broke the protocol; the connection ends with GOAWAY."""


def encode_headers(headers: dict[str, str]) -> bytes:
    parts = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        raw_name, raw_value = name.lower().encode(), value.encode()
        parts += [
            struct.pack(">I", len(raw_name)),
            raw_name,
            struct.pack(">I", len(raw_value)),
            raw_value,
        ]
    return b"".join(parts)


def decode_headers(block: bytes) -> dict[str, str]:
    """A decompressed header block; names lower-cased, repeated values NUL-joined."""
    view = memoryview(block)
    if len(view) < 4:
        raise ProtocolError("header block too short")
    (count,) = struct.unpack_from(">I", view)
    if count > MAX_HEADER_PAIRS:
        raise ProtocolError(f"header block with {count} pairs")
    offset = 4
    headers: dict[str, str] = {}
    for _ in range(count):
        pair = []
        for _ in range(2):
            if offset + 4 > len(view):
                raise ProtocolError("header block truncated")
            (size,) = struct.unpack_from(">I", view, offset)
            offset += 4
            if offset + size > len(view):
                raise ProtocolError("header block truncated")
            pair.append(bytes(view[offset : offset + size]).decode(errors="replace"))
            offset += size
        headers[pair[0].lower()] = pair[1]
    return headers


class _PeerClosed(Exception):
    """The peer closed the connection between two frames: a clean end."""


class SpdyStream:
    """One stream: headers from its SYN_STREAM, an inbound ``Inbox``, a writer."""

    def __init__(self, connection: SpdyConnection, stream_id: int, headers: dict[str, str]):
        self.connection = connection
        self.id = stream_id
        self.headers = headers
        self.inbox = Inbox(connection.budget)
        self.local_closed = False  # we sent FIN
        self.reset = False

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    @property
    def remote_closed(self) -> bool:
        """The peer sent FIN (or the stream or connection died)."""
        return self.inbox.ended

    # -- inbound ---------------------------------------------------------------

    def _end(self) -> None:
        self.inbox.end()
        self.connection._forget_if_done(self)

    def _abort(self) -> None:
        self.reset = True
        self.local_closed = True
        self.inbox.abort()

    def _peer_gone(self) -> None:
        """The connection ended cleanly: nothing more comes or goes, what came stays."""
        self.local_closed = True
        self.inbox.end()

    async def read(self) -> bytes:
        """The next chunk the peer sent; b"" once it half-closed (or the stream died)."""
        data = await self.inbox.read()
        if not data:
            self.connection._forget_if_done(self)
        return data

    def discard(self) -> None:
        """Nobody will read this stream: drop what it holds and whatever comes."""
        self.inbox.discard()
        self.connection._forget_if_done(self)

    async def read_all(self, limit: int = 1 << 20) -> bytes:
        out = bytearray()
        while chunk := await self.read():
            if len(out) + len(chunk) > limit:
                raise ProtocolError(f"stream {self.id} sent more than {limit} bytes")
            out += chunk
        return bytes(out)

    # -- outbound --------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        if self.local_closed or self.reset:
            raise ConnectionResetError(f"stream {self.id} is closed")
        view = memoryview(data)
        for start in range(0, len(view), MAX_SEND_CHUNK):
            await self.connection._send_data(self.id, view[start : start + MAX_SEND_CHUNK], 0)

    async def close(self) -> None:
        """Half-close: an empty DATA frame with FIN."""
        if not self.local_closed and not self.reset:
            self.local_closed = True
            self.connection._forget_if_done(self)
            with contextlib.suppress(ConnectionError):
                await self.connection._send_data(self.id, b"", FLAG_FIN)

    async def cancel(self) -> None:
        """RST_STREAM(CANCEL), as spdystream's ``Reset()``."""
        if not self.reset:
            self._abort()
            self.connection.streams.pop(self.id, None)
            with contextlib.suppress(ConnectionError):
                await self.connection._send_control(
                    RST_STREAM, 0, struct.pack(">II", self.id, RST_CANCEL)
                )


#: Decides whether to accept a stream the peer opens (from its SYN_STREAM headers).
StreamFilter = Callable[[SpdyStream], bool]


class SpdyConnection:
    """One SPDY/3.1 connection over an asyncio stream pair, server or client side."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        server: bool,
        accept: StreamFilter | None = None,
        idle_timeout: float = 4 * 3600,
        max_streams: int = MAX_STREAMS,
        budget: InboxBudget | None = None,
    ) -> None:
        #: What all this connection's streams may hold unread, together.
        self.budget = budget or InboxBudget()
        self._reader = reader
        self._writer = writer
        self._server = server
        self._accept = accept
        self._max_streams = max_streams
        #: Streams the peer opened and we accepted, once our SYN_REPLY is sent.
        self.incoming: asyncio.Queue[SpdyStream] = asyncio.Queue()
        self._idle_timeout = idle_timeout
        self._deflate = zlib.compressobj(
            9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, zdict=DICTIONARY
        )
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._send_lock = asyncio.Lock()
        self.streams: dict[int, SpdyStream] = {}
        self._next_id = 2 if server else 1
        self._last_peer_id = 0
        self._replies: dict[int, asyncio.Future[None]] = {}
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._stall_pings = 0
        self.closed = asyncio.Event()
        self.close_reason = ""

    # -- sending -------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionResetError("the SPDY connection is closed")
        async with self._send_lock:
            self._writer.write(data)
            await self._writer.drain()

    async def _send_control(self, kind: int, flags: int, body: bytes) -> None:
        header = _HEADER.pack(0x80000000 | VERSION << 16 | kind, flags << 24 | len(body))
        await self._write(header + body)

    async def _send_data(self, stream_id: int, data: memoryview | bytes, flags: int) -> None:
        header = _HEADER.pack(stream_id & 0x7FFFFFFF, flags << 24 | len(data))
        await self._write(header + bytes(data))

    def _forget_if_done(self, stream: SpdyStream) -> None:
        """Drop a stream both sides have closed (a long port-forward opens thousands)."""
        if stream.local_closed and stream.remote_closed and stream.inbox.empty:
            self.streams.pop(stream.id, None)

    def _compress(self, headers: dict[str, str]) -> bytes:
        raw = encode_headers(headers)
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    async def open_stream(self, headers: dict[str, str], *, timeout: float = 30.0) -> SpdyStream:
        """Client side: SYN_STREAM, then wait for the peer's SYN_REPLY."""
        stream_id = self._next_id
        self._next_id += 2
        stream = SpdyStream(self, stream_id, headers)
        self.streams[stream_id] = stream
        reply = self._replies[stream_id] = asyncio.get_running_loop().create_future()
        async with self._send_lock:  # compression order must match sending order
            block = self._compress(headers)
            body = struct.pack(">IIBB", stream_id, 0, 0, 0) + block
            self._writer.write(
                _HEADER.pack(0x80000000 | VERSION << 16 | SYN_STREAM, len(body)) + body
            )
            await self._writer.drain()
        try:
            await asyncio.wait_for(reply, timeout)
        finally:
            self._replies.pop(stream_id, None)
        return stream

    async def _reply(self, stream: SpdyStream) -> None:
        async with self._send_lock:
            block = self._compress({})
            body = struct.pack(">I", stream.id) + block
            self._writer.write(
                _HEADER.pack(0x80000000 | VERSION << 16 | SYN_REPLY, len(body)) + body
            )
            await self._writer.drain()

    async def ping(self, ping_id: int = 1, *, timeout: float = 10.0) -> None:
        future = self._pings[ping_id] = asyncio.get_running_loop().create_future()
        await self._send_control(PING, 0, struct.pack(">I", ping_id))
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            self._pings.pop(ping_id, None)

    async def close(self, status: int = GOAWAY_OK) -> None:
        """GOAWAY (unless the connection already ended), close the socket, and abort
        every stream, releasing what each still held."""
        if not self.closed.is_set():
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send_control(GOAWAY, 0, struct.pack(">II", self._last_peer_id, status))
        self._shutdown("closed")
        self._abort_streams()

    def _shutdown(self, reason: str, *, keep_received: bool = False) -> None:
        """End the connection; ``keep_received``: the peer ended it cleanly, so what its
        streams already received stays readable (until ``close()``)."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        if keep_received:
            for stream in self.streams.values():
                stream._peer_gone()
        else:
            self._abort_streams()
        while not self.incoming.empty():
            self.incoming.get_nowait()._abort()
        for future in [*self._replies.values(), *self._pings.values()]:
            if not future.done():
                future.set_exception(ConnectionResetError(reason))
        with contextlib.suppress(Exception):
            self._writer.close()

    def _abort_streams(self) -> None:
        for stream in self.streams.values():
            stream._abort()  # releases what each held
        self.streams.clear()

    # -- receiving -----------------------------------------------------------------

    async def serve(self) -> None:
        """Read frames until the peer goes away, breaks the protocol or idles out."""
        try:
            while not self.closed.is_set():
                await self._read_frame()
        except ProtocolError as exc:
            log.info("SPDY protocol error from peer: %s", exc)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send_control(
                    GOAWAY, 0, struct.pack(">II", self._last_peer_id, GOAWAY_PROTOCOL_ERROR)
                )
            self._shutdown(f"protocol error: {exc}")
        except TimeoutError:
            self._shutdown("idle timeout")
        except _PeerClosed:
            self._shutdown("the peer closed the connection", keep_received=True)
        except (asyncio.IncompleteReadError, ConnectionError):
            # EOF inside a frame or a reset: what the streams hold may be cut short.
            self._shutdown("the peer went away")
        finally:
            self._shutdown("connection ended")

    async def _read_frame(self) -> None:
        try:
            head = await self._read_exactly(8)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _PeerClosed from None  # EOF between frames: the peer finished
            raise
        first, second = _HEADER.unpack(head)
        flags, length = second >> 24, second & 0xFFFFFF
        # Judge the header before waiting for a body it may only pretend to have.
        if first & 0x80000000:
            version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
            if version != VERSION:
                raise ProtocolError(f"SPDY version {version}")
            if kind not in _CONTROL_TYPES:
                raise ProtocolError(f"unknown control frame type {kind}")
            if length > MAX_HEADER_BLOCK + 10:
                raise ProtocolError(f"control frame of {length} bytes")
        else:
            await self._data(first & 0x7FFFFFFF, flags, length)
            return
        body = await self._read_exactly(length) if length else b""
        await self._control(kind, flags, body)

    async def _read_exactly(self, size: int) -> bytes:
        async with asyncio.timeout(self._idle_timeout):  # cheaper than wait_for: no task
            return await self._reader.readexactly(size)

    def _decompress(self, block: bytes) -> dict[str, str]:
        if len(block) > MAX_HEADER_BLOCK:
            raise ProtocolError("header block too large")
        try:
            raw = self._inflate.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise ProtocolError(f"header block does not decompress: {exc}") from None
        if self._inflate.unconsumed_tail:
            raise ProtocolError("header block too large")
        return decode_headers(raw)

    async def _control(self, kind: int, flags: int, body: bytes) -> None:
        if kind == SYN_STREAM:
            if len(body) < 10:
                raise ProtocolError("SYN_STREAM too short")
            stream_id = struct.unpack_from(">I", body)[0] & 0x7FFFFFFF
            headers = self._decompress(body[10:])
            await self._syn_stream(stream_id, flags, headers)
        elif kind == SYN_REPLY:
            if len(body) < 4:
                raise ProtocolError("SYN_REPLY too short")
            stream_id = struct.unpack_from(">I", body)[0] & 0x7FFFFFFF
            self._decompress(body[4:])
            future = self._replies.get(stream_id)
            if future is not None and not future.done():
                future.set_result(None)
            if flags & FLAG_FIN and stream_id in self.streams:
                self.streams[stream_id]._end()
        elif kind == RST_STREAM:
            if len(body) != 8:
                raise ProtocolError("RST_STREAM length is not 8")
            stream_id = struct.unpack_from(">I", body)[0] & 0x7FFFFFFF
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream._abort()
            future = self._replies.get(stream_id)
            if future is not None and not future.done():
                future.set_exception(ConnectionRefusedError(f"stream {stream_id} was reset"))
        elif kind == PING:
            if len(body) != 4:
                raise ProtocolError("PING length is not 4")
            (ping_id,) = struct.unpack(">I", body)
            ours = ping_id % 2 == (0 if self._server else 1)
            if ours:
                future = self._pings.get(ping_id)
                if future is not None and not future.done():
                    future.set_result(None)
            else:
                await self._send_control(PING, 0, body)  # the peer's ping: echo it
        elif kind == GOAWAY:
            self._shutdown("the peer sent GOAWAY", keep_received=True)
        elif kind == HEADERS:
            if len(body) < 4:
                raise ProtocolError("HEADERS too short")
            self._decompress(body[4:])  # keeps the shared zlib stream in step
        elif kind == SETTINGS:
            if len(body) < 4 or len(body) != 4 + 8 * struct.unpack_from(">I", body)[0]:
                raise ProtocolError("SETTINGS length does not match its entry count")
        elif kind == WINDOW_UPDATE and len(body) != 8:
            raise ProtocolError("WINDOW_UPDATE length is not 8")
        # Unknown types never get here: _read_frame refuses them, as Go's framer does.

    async def _syn_stream(self, stream_id: int, flags: int, headers: dict[str, str]) -> None:
        if stream_id == 0 or stream_id % 2 == (0 if self._server else 1):
            raise ProtocolError(f"SYN_STREAM with stream id {stream_id} of the wrong parity")
        if stream_id <= self._last_peer_id:
            await self._send_control(
                RST_STREAM, 0, struct.pack(">II", stream_id, RST_PROTOCOL_ERROR)
            )
            return
        self._last_peer_id = stream_id
        stream = SpdyStream(self, stream_id, headers)
        accepted = self._accept is not None and self._accept(stream)
        if not accepted or len(self.streams) >= self._max_streams:
            await self._send_control(
                RST_STREAM, 0, struct.pack(">II", stream_id, RST_REFUSED_STREAM)
            )
            return
        self.streams[stream_id] = stream
        await self._reply(stream)
        if flags & (FLAG_FIN | FLAG_UNIDIRECTIONAL):
            stream._end()
        self.incoming.put_nowait(stream)

    def _check_data_stream(self, stream_id: int) -> None:
        """DATA must name a stream that exists or existed; anything else is garbage."""
        ours = stream_id % 2 == (0 if self._server else 1)
        known = stream_id in self.streams or (
            stream_id < self._next_id if ours else 0 < stream_id <= self._last_peer_id
        )
        if stream_id == 0 or not known:
            raise ProtocolError(f"DATA for stream {stream_id}, which was never opened")

    async def _data(self, stream_id: int, flags: int, length: int) -> None:
        """One DATA frame's body, a piece at a time, into its stream's inbox.

        A stream that is gone, was refused or is discarded gets nothing (spdystream drops
        data for streams it does not know); the pieces are read and dropped. No flow
        control in SPDY as Go speaks it: when the stream or the connection holds its limit,
        stop reading until the readers take some (TCP then pushes back on the peer).
        """
        self._check_data_stream(stream_id)
        left = length
        while left:
            stream = self.streams.get(stream_id)
            # A reader with room takes bigger pieces (fewer reads); one piece past a limit
            # is the most a connection ever holds over it.
            room = READ_PIECE if stream is None else max(READ_PIECE, stream.inbox.room_left)
            piece = await self._read_exactly(min(left, room))
            left -= len(piece)
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.inbox.feed(piece)
                await wait_for_room(stream.inbox, self._stall_ping, self._idle_timeout)
        stream = self.streams.get(stream_id)
        if flags & FLAG_FIN and stream is not None:
            stream._end()

    async def _stall_ping(self) -> None:
        """A PING while the readers are full: a peer that went away answers with a reset.
        Ids of our parity from a range ``ping()`` does not use; nobody waits for the echo."""
        self._stall_pings = (self._stall_pings + 1) % 0x10000000
        ping_id = 0x40000000 + 2 * self._stall_pings + (0 if self._server else 1)
        await self._send_control(PING, 0, struct.pack(">I", ping_id))
        if self._writer.is_closing():  # the write met the reset of a peer that is gone
            raise ConnectionResetError("the peer went away")
