"""RFC 6455 WebSocket, server side: the handshake helpers, and the connection after the ``101``.

Framing is ``wsproto``'s (a maintained sans-I/O implementation): it parses every frame,
checks masking, reserved bits, opcodes and control frames, validates UTF-8 in text messages
incrementally, writes pongs and close frames and keeps the close handshake's state. The one
thing written here is the 2-10 byte header of our own data messages (unmasked, never
fragmented): wsproto's send path copies each payload four times, 40 µs per 64 KiB here,
which cost port-forward over a WebSocket a fifth of its throughput (see the README). This
module owns the socket around it:

* it reads at most ``READ_PIECE`` bytes, gives them to wsproto and takes every event out
  before it reads again, so the bytes a client sent are held only until the reader above
  takes them (``receive`` waits for that reader; TCP pushes back meanwhile);
* messages go up in ``Piece``s as their bytes arrive, never assembled: a ``channel.k8s.io``
  message is a channel byte and then a byte stream, so a 16 MiB message costs no 16 MiB;
* a message longer than ``MAX_MESSAGE`` bytes or than ``MAX_FRAMES`` frames (empty
  fragments cost nothing else, so they are counted) ends the connection with close code
  1009; wsproto's protocol errors with 1002 and bad UTF-8 with 1007;
* pings are answered with pongs; a client's close frame is answered with ours, then the
  server closes the TCP connection (RFC 6455 §7.1.1); ``close()`` starts the handshake and
  waits briefly for the client's answer.

No extensions, no compression (the kubelet's ``wsstream`` has none either).
Imports nothing from the agent but ``streaming.http`` and ``streaming.inbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, generate_accept_token

from agent.streaming.http import Request
from agent.streaming.inbox import READ_PIECE, Inbox, wait_for_room

__all__ = [
    "CLOSE_NORMAL",
    "CLOSE_TOO_BIG",
    "MAX_FRAMES",
    "MAX_MESSAGE",
    "Piece",
    "WebSocket",
    "accept_key",
    "is_websocket_request",
]

CLOSE_NORMAL, CLOSE_TOO_BIG = 1000, 1009
#: Longer messages end the connection: golang.org/x/net/websocket's default, which the
#: kubelet's wsstream serves with (kubectl sends stdin in 32 KiB pieces).
MAX_MESSAGE = 32 << 20
#: Frames one message may take (Go's gorilla client fragments at its 4 KiB write buffer).
MAX_FRAMES = 65536
#: How long ``close()`` waits for the client's close frame.
CLOSE_TIMEOUT = 2.0


_TEXT, _BINARY = 0x1, 0x2
_FIN = 0x80


def _data_header(opcode: int, size: int) -> bytes:
    """A final, unmasked frame's header (RFC 6455 §5.2): the shortest length encoding."""
    if size < 126:
        return struct.pack("!BB", _FIN | opcode, size)
    if size < 1 << 16:
        return struct.pack("!BBH", _FIN | opcode, 126, size)
    return struct.pack("!BBQ", _FIN | opcode, 127, size)


def is_websocket_request(request: Request) -> bool:
    return "websocket" in request.header("upgrade").lower()


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``."""
    return generate_accept_token(key.encode()).decode()


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of a data message, as it arrived."""

    data: bytes
    #: the message starts here
    first: bool
    #: the message ends here
    last: bool
    text: bool


class WebSocket:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        idle_timeout: float,
        max_message: int = MAX_MESSAGE,
        max_frames: int = MAX_FRAMES,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._idle_timeout = idle_timeout
        self._max_message = max_message
        self._max_frames = max_frames
        self._protocol = Connection(ConnectionType.SERVER)
        self._events: Iterator[Event] = iter(())
        self._send_lock = asyncio.Lock()
        self._in_message = False
        self._message_size = 0
        self._message_frames = 0
        self._receiving = False
        self._close_started: float | None = None
        self._ended = asyncio.Event()
        #: the close code of the handshake (or failure) that ended the connection
        self.close_code: int | None = None
        self.closed = False

    # -- receiving ---------------------------------------------------------------------

    async def receive(self) -> Piece | None:
        """The next piece of a data message; None once the connection ended. One task
        receives at a time."""
        if self._receiving:
            raise RuntimeError("the WebSocket is already being read")
        self._receiving = True
        try:
            return await self._receive()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            self._abort()
            return None
        finally:
            self._receiving = False

    async def _receive(self) -> Piece | None:
        while not self.closed:
            event = next(self._events, None)
            if event is None:
                if not await self._read_more():
                    return None
            elif isinstance(event, TextMessage | BytesMessage):
                if self._protocol.state is not ConnectionState.OPEN:
                    continue  # we are closing: data is read and dropped
                piece = self._piece(event)
                if piece is not None:
                    return piece
                # Tell the client, and wait for its answer reading (and dropping) the rest.
                await self._start_close(CLOSE_TOO_BIG, "message too big")
            elif isinstance(event, Ping):
                if self._protocol.state is ConnectionState.OPEN:
                    await self._send_event(event.response())
            elif isinstance(event, CloseConnection):
                await self._closing(event)
                return None
            # Pongs need no answer.
        return None

    async def _read_more(self) -> bool:
        """Give wsproto the next bytes; False at EOF. Once we sent our close frame, the
        client has ``CLOSE_TIMEOUT`` seconds to answer (TimeoutError)."""
        timeout = self._idle_timeout
        if self._close_started is not None:
            timeout = self._close_started + CLOSE_TIMEOUT - asyncio.get_running_loop().time()
        async with asyncio.timeout(max(timeout, 0)):  # cheaper than wait_for: no task
            data = await self._reader.read(READ_PIECE)
        if not data:  # EOF without a close frame
            self._abort()
            return False
        self._protocol.receive_data(data)
        self._events = self._protocol.events()
        return True

    def _piece(self, event: TextMessage | BytesMessage) -> Piece | None:
        data = event.data.encode() if isinstance(event, TextMessage) else bytes(event.data)
        first = not self._in_message
        if first:
            self._message_size = self._message_frames = 0
        self._in_message = not event.message_finished
        self._message_size += len(data)
        self._message_frames += event.frame_finished
        if self._message_size > self._max_message or self._message_frames > self._max_frames:
            return None
        return Piece(data, first, event.message_finished, isinstance(event, TextMessage))

    async def _closing(self, event: CloseConnection) -> None:
        """A close frame came (or wsproto found the stream broken: then it is still OPEN)."""
        state = self._protocol.state
        if state is ConnectionState.REMOTE_CLOSING:  # the client's close: answer it
            self.close_code = event.code
            with contextlib.suppress(ConnectionError, LocalProtocolError):
                await self._send_event(event.response())
        elif state is ConnectionState.OPEN:  # a protocol error: fail the connection
            await self._start_close(event.code, event.reason or "")
            await self._linger()
        # CLOSED: the answer to our own close frame.
        self._abort()

    async def _start_close(self, code: int, reason: str) -> None:
        """Our close frame; what the client sends until its answer is dropped."""
        self.close_code = code
        self._close_started = asyncio.get_running_loop().time()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self._send_event(CloseConnection(code, reason[:100])), 5)

    async def _linger(self) -> None:
        """After a protocol error nothing more can be parsed: drop what the client still
        sends until it hangs up or ``CLOSE_TIMEOUT`` passes, so that closing our socket with
        its data unread (a TCP reset) does not destroy our close frame on its way. Our
        FIN tells the client we are done, so it hangs up without waiting for us."""
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            if self._writer.can_write_eof():
                self._writer.write_eof()
            async with asyncio.timeout(CLOSE_TIMEOUT):
                while await self._reader.read(READ_PIECE):
                    pass

    async def wait_for_room(self, inbox: Inbox) -> None:
        """Stop reading until ``inbox`` has room (TCP pushes back on the client); a client
        that went away meanwhile is found by pings, one that never makes room by the idle
        timeout. ``ConnectionError`` once the connection is gone."""
        try:
            await wait_for_room(inbox, self._stall_ping, self._idle_timeout)
        except TimeoutError:
            self._abort()
            raise ConnectionResetError("the readers made no room within the idle timeout") from None
        except ConnectionError:
            self._abort()
            raise

    async def _stall_ping(self) -> None:
        await self._send_event(Ping(b""))
        if self._writer.is_closing():  # the write met the reset of a peer that is gone
            raise ConnectionResetError("the client went away")

    # -- sending -----------------------------------------------------------------------

    async def send(self, *parts: bytes, text: bool = False) -> None:
        """One whole message of ``parts`` joined: binary, or text (then ``parts`` must be
        UTF-8) if ``text``. Only while the connection is open, as wsproto allows."""
        if self.closed or self._protocol.state is not ConnectionState.OPEN:
            raise ConnectionResetError("the WebSocket is closed")
        size = sum(len(part) for part in parts)
        frame = b"".join((_data_header(_TEXT if text else _BINARY, size), *parts))
        async with self._send_lock:
            self._writer.write(frame)
            await self._writer.drain()

    async def _send_event(self, event: Event) -> None:
        if self.closed:
            raise ConnectionResetError("the WebSocket is closed")
        try:
            frame = self._protocol.send(event)
        except LocalProtocolError:
            raise ConnectionResetError("the WebSocket is closing") from None
        async with self._send_lock:
            self._writer.write(frame)
            await self._writer.drain()

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the close handshake, wait briefly for the client's answer, then hang up."""
        if self.closed:
            return
        if self._protocol.state is ConnectionState.OPEN:
            await self._start_close(code, reason)
        if self._receiving:  # the reader sees the answer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), CLOSE_TIMEOUT)
        else:
            while await self.receive() is not None:
                pass  # data after our close frame is dropped; _read_more keeps the time
        self._abort()

    def _abort(self) -> None:
        self.closed = True
        self._ended.set()
        with contextlib.suppress(Exception):
            self._writer.close()
