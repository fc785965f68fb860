"""The streaming server's WebSocket layer (wsproto framing, our I/O and limits) and its
``channel.k8s.io`` router, over real loopback sockets.

The client side is raw RFC 6455 frames from ``tests.support.remotecommand_client``
(``ws_frame``/``read_ws_frame``), which share no code with wsproto or ``agent.streaming``.
The server side is ``agent.streaming.websocket.WebSocket`` after the ``101`` (no HTTP
handshake: that is the streaming server's, tested in the integration suite).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from wsproto import ConnectionType
from wsproto.connection import Connection as WsprotoConnection
from wsproto.events import BytesMessage, TextMessage

from agent.streaming import inbox, websocket
from agent.streaming.channels import WsChannels
from agent.streaming.inbox import CONNECTION_BUFFER_LIMIT, INBOX_BUFFER_LIMIT, READ_PIECE
from agent.streaming.websocket import Piece, WebSocket
from tests.support.remotecommand_client import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WsFrame,
    read_ws_frame,
    ws_frame,
)

Handler = Callable[[WebSocket], Awaitable[None]]


@dataclass
class Peer:
    """A raw client connected to a server-side ``WebSocket`` that ``handler`` drives."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    ws: WebSocket
    done: asyncio.Task[None]
    sent: list[bytes] = field(default_factory=list)

    async def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))
        await self.writer.drain()

    async def frame(self, timeout: float = 5.0) -> WsFrame:
        return await asyncio.wait_for(read_ws_frame(self.reader), timeout)

    async def close_frame(self, timeout: float = 10.0) -> tuple[int, str]:
        """Skip data frames up to the server's close frame: its (code, reason)."""
        while (frame := await self.frame(timeout)).opcode != OP_CLOSE:
            pass
        (code,) = struct.unpack(">H", frame.payload[:2])
        return code, frame.payload[2:].decode()

    async def eof(self, timeout: float = 5.0) -> bool:
        """The server closed the TCP connection (after whatever it still sent)."""
        return await asyncio.wait_for(self.reader.read(), timeout) is not None


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[Peer]]]:
    servers: list[asyncio.Server] = []
    peers: list[Peer] = []

    async def make(handler: Handler, **limits: int) -> Peer:
        ready: asyncio.Future[tuple[WebSocket, asyncio.Task[None]]] = (
            asyncio.get_running_loop().create_future()
        )

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ws = WebSocket(reader, writer, idle_timeout=30, **limits)
            task = asyncio.current_task()
            assert task is not None
            ready.set_result((ws, task))
            try:
                with contextlib.suppress(asyncio.CancelledError):  # the test ended
                    await handler(ws)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ws, task = await ready
        peer = Peer(reader, writer, ws, task)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.writer.close()
        peer.done.cancel()
        await asyncio.gather(peer.done, return_exceptions=True)
    for server in servers:
        server.close()
        await server.wait_closed()


def echo(pieces: list[Piece]) -> Handler:
    """Echo every message whole (binary or text), recording the pieces it came in."""

    async def handler(ws: WebSocket) -> None:
        message = bytearray()
        while (piece := await ws.receive()) is not None:
            pieces.append(piece)
            message += piece.data
            if piece.last:
                await ws.send(bytes(message), text=piece.text)
                message.clear()

    return handler


# -- framing, fragments, control frames ---------------------------------------------------


async def test_fragments_come_up_as_pieces_and_pings_between_them_are_answered(connect):
    pieces: list[Piece] = []
    peer = await connect(echo(pieces))
    await peer.send(
        ws_frame(OP_BINARY, b"\x00abc", fin=False),
        ws_frame(OP_PING, b"are you there"),
        ws_frame(OP_CONTINUATION, b"", fin=False),  # an empty fragment is legal
        ws_frame(OP_CONTINUATION, b"def"),
    )
    pong = await peer.frame()
    assert (pong.opcode, pong.payload, pong.masked) == (OP_PONG, b"are you there", False)
    reply = await peer.frame()
    assert (reply.opcode, reply.fin, reply.payload) == (OP_BINARY, True, b"\x00abcdef")
    assert [(p.data, p.first, p.last) for p in pieces] == [
        (b"\x00abc", True, False),
        (b"", False, False),
        (b"def", False, True),
    ]


async def test_text_is_utf8_checked_across_fragment_boundaries(connect):
    pieces: list[Piece] = []
    peer = await connect(echo(pieces))
    word = "grüße".encode()
    cut = word.index(b"\xc3") + 1  # inside the two bytes of "ü"
    await peer.send(ws_frame(OP_TEXT, word[:cut], fin=False), ws_frame(OP_CONTINUATION, word[cut:]))
    reply = await peer.frame()
    assert (reply.opcode, reply.payload) == (OP_TEXT, word)
    assert all(p.text for p in pieces)


async def test_bad_utf8_in_a_text_message_closes_with_1007(connect):
    peer = await connect(echo([]))
    await peer.send(ws_frame(OP_TEXT, b"ok \xff\xfe not utf-8"))
    code, _ = await peer.close_frame()
    assert code == 1007
    assert await peer.eof()  # the server's FIN: it is done with us
    peer.writer.close()
    await asyncio.wait_for(peer.done, 1.0)  # and it stops at our FIN, not at a timeout
    assert peer.ws.close_code == 1007


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([ws_frame(OP_BINARY, b"x", masked=False)], id="unmasked"),
        pytest.param([ws_frame(OP_BINARY, b"x", rsv=4)], id="reserved-bit"),
        pytest.param([ws_frame(OP_CONTINUATION, b"x")], id="continuation-first"),
        pytest.param([ws_frame(OP_PING, b"x", fin=False)], id="fragmented-ping"),
        pytest.param([ws_frame(OP_BINARY, b"a", fin=False), ws_frame(OP_TEXT, b"b")], id="nested"),
        pytest.param([ws_frame(0x3, b"x")], id="unknown-opcode"),
        pytest.param([ws_frame(OP_PING, b"p" * 126)], id="long-ping"),
    ],
)
async def test_protocol_errors_close_with_1002(connect, frames):
    peer = await connect(echo([]))
    await peer.send(*frames)
    code, reason = await peer.close_frame()
    assert code == 1002, reason
    assert await peer.eof()


@pytest.mark.parametrize("size", [0, 1, 124, 125, 126, 65535, 65536, 1 << 20])
async def test_our_data_frames_parse_as_rfc6455_with_the_shortest_length(connect, size):
    """The one thing we frame ourselves (see the module), read back by wsproto's client
    and by the independent test client."""
    sent: list[WsFrame] = []
    peer = await connect(echo([]))
    await peer.send(ws_frame(OP_BINARY, bytes(size)), ws_frame(OP_TEXT, b"t" * size))
    for opcode in (OP_BINARY, OP_TEXT):
        frame = await peer.frame()
        sent.append(frame)
        assert (frame.opcode, frame.fin, frame.masked, frame.rsv) == (opcode, True, False, 0)
        assert len(frame.payload) == size
    raw = b"".join(bytes([0x80 | f.opcode]) + _length(len(f.payload)) + f.payload for f in sent)
    client = WsprotoConnection(ConnectionType.CLIENT)
    client.receive_data(raw)
    events = list(client.events())
    assert events == [BytesMessage(data=bytes(size)), TextMessage(data="t" * size)]


def _length(size: int) -> bytes:
    """The shortest RFC 6455 length field (no mask bit), written from the spec."""
    if size < 126:
        return bytes([size])
    if size < 65536:
        return bytes([126]) + size.to_bytes(2, "big")
    return bytes([127]) + size.to_bytes(8, "big")


async def test_no_data_after_our_close_frame(connect):
    async def close_then_send(ws: WebSocket) -> None:
        closing = asyncio.ensure_future(ws.close())
        await asyncio.sleep(0.1)
        with pytest.raises(ConnectionResetError):
            await ws.send(b"too late")
        await closing

    peer = await connect(close_then_send)
    assert (await peer.close_frame())[0] == 1000
    await peer.send(ws_frame(OP_CLOSE, b"\x03\xe8"))
    await asyncio.wait_for(peer.done, 2)


# -- limits -------------------------------------------------------------------------------


async def test_a_message_over_the_limit_closes_with_1009_without_being_held(connect):
    pieces: list[Piece] = []
    peer = await connect(echo(pieces), max_message=1 << 20)
    chunk = bytes(256 * 1024)
    await peer.send(ws_frame(OP_BINARY, chunk, fin=False))
    await peer.send(*(ws_frame(OP_CONTINUATION, chunk, fin=False) for _ in range(3)))
    await peer.send(ws_frame(OP_CONTINUATION, b"one byte too many"))
    code, reason = await peer.close_frame()
    assert (code, reason) == (1009, "message too big")
    await peer.send(ws_frame(OP_CLOSE, struct.pack(">H", 1009)))  # the client's answer
    assert await peer.eof()
    await asyncio.wait_for(peer.done, 1.0)  # the answer ends it, not a timeout
    assert max(len(p.data) for p in pieces) <= READ_PIECE  # never a whole message


async def test_the_default_limit_is_the_kubelets(connect):
    assert websocket.MAX_MESSAGE == 32 << 20  # golang.org/x/net/websocket's default
    peer = await connect(echo([]))
    await peer.send(ws_frame(OP_BINARY, bytes(websocket.MAX_MESSAGE + 1)))
    assert (await peer.close_frame())[0] == 1009


async def test_endless_empty_fragments_are_cut_off(connect):
    peer = await connect(echo([]), max_frames=1000)
    await peer.send(ws_frame(OP_BINARY, b"\x00", fin=False))
    await peer.send(*(ws_frame(OP_CONTINUATION, b"", fin=False) for _ in range(1100)))
    code, _ = await peer.close_frame()
    assert code == 1009


async def test_a_message_of_many_small_fragments_under_the_limit_is_fine(connect):
    peer = await connect(echo([]), max_frames=1000)
    frames = [ws_frame(OP_BINARY, b"a", fin=False)]
    frames += [ws_frame(OP_CONTINUATION, b"b", fin=False) for _ in range(998)]
    await peer.send(*frames, ws_frame(OP_CONTINUATION, b"c"))
    reply = await peer.frame()
    assert reply.payload == b"a" + b"b" * 998 + b"c"


# -- close handshakes ---------------------------------------------------------------------


async def test_a_client_close_is_answered_then_the_server_hangs_up(connect):
    peer = await connect(echo([]))
    await peer.send(ws_frame(OP_CLOSE, struct.pack(">H", 1001) + b"going away"))
    assert await peer.close_frame() == (1001, "going away")
    assert await peer.eof()
    await asyncio.wait_for(peer.done, 5)
    assert peer.ws.close_code == 1001


async def test_an_empty_close_frame_is_answered_with_an_empty_one(connect):
    peer = await connect(echo([]))
    await peer.send(ws_frame(OP_CLOSE, b""))
    frame = await peer.frame()
    assert (frame.opcode, frame.payload) == (OP_CLOSE, b"")


async def test_a_server_close_waits_for_the_answer(connect):
    async def close_at_once(ws: WebSocket) -> None:
        await ws.close(1000, "done")

    peer = await connect(close_at_once)
    assert await peer.close_frame() == (1000, "done")
    assert not peer.done.done()  # waiting for our answer
    await peer.send(ws_frame(OP_BINARY, b"late data is dropped"), ws_frame(OP_CLOSE, b"\x03\xe8"))
    await asyncio.wait_for(peer.done, 1.0)
    assert await peer.eof()


async def test_a_server_close_gives_up_on_a_silent_client(connect, monkeypatch):
    monkeypatch.setattr(websocket, "CLOSE_TIMEOUT", 0.3)

    async def close_at_once(ws: WebSocket) -> None:
        await ws.close()

    peer = await connect(close_at_once)
    assert (await peer.close_frame())[0] == 1000
    await asyncio.wait_for(peer.done, 2.0)
    assert await peer.eof()


async def test_a_vanished_client_ends_receive(connect):
    seen: list[Piece | None] = []

    async def handler(ws: WebSocket) -> None:
        seen.append(await ws.receive())

    peer = await connect(handler)
    peer.writer.close()
    await asyncio.wait_for(peer.done, 5)
    assert seen == [None]
    assert peer.ws.closed


# -- channel.k8s.io routing and memory ----------------------------------------------------


def channels_handler(holder: list[WsChannels], **options: object) -> Handler:
    async def handler(ws: WebSocket) -> None:
        channels = WsChannels(ws, **options)  # type: ignore[arg-type]
        holder.append(channels)
        await channels.run()

    return handler


async def test_channels_route_pieces_and_drop_channels_nobody_reads(connect):
    holder: list[WsChannels] = []
    peer = await connect(channels_handler(holder, base64_framing=False, inputs=[0]))
    await peer.send(
        ws_frame(OP_BINARY, b"", fin=False),  # the channel byte may come late
        ws_frame(OP_CONTINUATION, b"\x00hel", fin=False),
        ws_frame(OP_CONTINUATION, b"lo"),
        ws_frame(OP_BINARY, b"\x04" + bytes(4 << 20)),  # a resize nobody reads: dropped
        ws_frame(OP_BINARY, b"\x09stray"),  # no such channel
        ws_frame(OP_BINARY, b"\x00 world"),
    )
    stdin = holder[0].input(0)
    got = b""
    while len(got) < len(b"hello world"):
        got += await asyncio.wait_for(stdin.read(), 5)
    assert got == b"hello world"
    assert holder[0].budget.used == 0


async def test_base64_channels_decode_across_fragments(connect):
    holder: list[WsChannels] = []
    peer = await connect(channels_handler(holder, base64_framing=True, inputs=[0]))
    text = b"0" + base64.b64encode(b"base64 in pieces!")
    await peer.send(
        ws_frame(OP_TEXT, text[:3], fin=False),
        ws_frame(OP_CONTINUATION, text[3:10], fin=False),
        ws_frame(OP_CONTINUATION, text[10:]),
        ws_frame(OP_TEXT, b"0not base64!!"),  # dropped
        ws_frame(OP_TEXT, b"0" + base64.b64encode(b" end")),
    )
    stdin = holder[0].input(0)
    got = b""
    while len(got) < len(b"base64 in pieces! end"):
        got += await asyncio.wait_for(stdin.read(), 5)
    assert got == b"base64 in pieces! end"


async def test_v5_close_signal_ends_a_channel(connect):
    holder: list[WsChannels] = []
    peer = await connect(
        channels_handler(holder, base64_framing=False, inputs=[0], close_signals=True)
    )
    await peer.send(ws_frame(OP_BINARY, b"\x00last words"), ws_frame(OP_BINARY, b"\xff\x00"))
    stdin = holder[0].input(0)
    assert await asyncio.wait_for(stdin.read(), 5) == b"last words"
    assert await asyncio.wait_for(stdin.read(), 5) == b""  # EOF, the connection lives on
    assert not holder[0].gone.is_set()


async def test_a_channel_nobody_reads_stops_the_reader_at_its_limit(connect, monkeypatch):
    monkeypatch.setattr(inbox, "STALL_PING_INTERVAL", 0.2)  # finds the vanished client fast
    holder: list[WsChannels] = []
    peer = await connect(channels_handler(holder, base64_framing=False, inputs=[0, 2]))
    big = bytes(16 << 20)

    async def flood(channel: int) -> None:
        await peer.send(ws_frame(OP_BINARY, bytes([channel]) + big))

    floods = [asyncio.ensure_future(flood(c)) for c in (0, 2)]
    await asyncio.sleep(1.0)
    channels = holder[0]
    assert not all(f.done() for f in floods)  # TCP pushes back on the client
    assert channels.input(0).buffered <= INBOX_BUFFER_LIMIT + READ_PIECE
    assert channels.budget.used <= CONNECTION_BUFFER_LIMIT + READ_PIECE
    # The reader drains one channel: the router goes on, the other stays bounded.
    channels.input(0).discard()
    await asyncio.sleep(0.5)
    assert channels.input(2).buffered <= INBOX_BUFFER_LIMIT + READ_PIECE
    # The client dies (its unsent data with it); the pings find out, and the end of the
    # connection releases everything.
    for f in floods:
        f.cancel()
    await asyncio.gather(*floods, return_exceptions=True)
    peer.writer.transport.abort()
    await asyncio.wait_for(peer.done, 10)
    assert channels.gone.is_set()
    assert channels.budget.used == 0
