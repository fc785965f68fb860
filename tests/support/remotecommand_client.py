"""Exec and attach clients (remotecommand) over SPDY and WebSocket, independent of the agent.

SPDY (protocols.md §3.5, client-go ``tools/remotecommand`` v1-v5): streams are created in
client-go's order (error, stdin, stdout, stderr unless tty, resize if tty and v3+), each
waiting for its SYN_REPLY; stdin is copied and then half-closed; stdout and stderr are read
to EOF and only then is the error stream's content taken, as ``streamProtocolV4.stream`` does.

WebSocket (§3.6, apimachinery ``wsstream``): the client side of RFC 6455 is written here on
plain asyncio streams (masked client frames, fragments, ping/pong, close) so that it cannot
share a library, or a library's quirks, with the server. Channels 0..4 are stdin, stdout,
stderr, error and resize; ``base64.*`` subprotocols frame each message as ``'0'+channel``
followed by base64 text. Only v5 can half-close stdin (``[255, 0]``); with older subprotocols
the client cannot signal EOF, so give those commands that end by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import struct
import urllib.parse
from base64 import b64decode, b64encode
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from tests.support.spdy_client import (
    ClientStream,
    SpdyClientConnection,
    SpdyError,
    connect,
    http_upgrade,
)

REMOTECOMMAND_PROTOCOLS = (
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
)

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
#: v5.channel.k8s.io's control message prefix: ``[255, channel]`` half-closes ``channel``.
CLOSE_SIGNAL = 255

Stdin = bytes | AsyncIterator[bytes] | None
Sizes = Sequence[tuple[int, int]] | AsyncIterator[tuple[int, int]] | None


# --------------------------------------------------------------------------------------------
# Results and the error stream


class StatusParseError(SpdyError, ValueError):
    """A v4+ error stream that is not a JSON ``metav1.Status``."""


def uses_status_json(protocol: str) -> bool:
    """v4 and v5 (SPDY or WebSocket, binary or base64) write a JSON Status; older write text."""
    return protocol.startswith(("v4.", "v5."))


def parse_status(protocol: str, raw: bytes) -> dict[str, Any] | None:
    """The error stream's meaning: the JSON Status for v4+, ``{"message": text}`` for older
    protocols, ``None`` when it is empty (client-go reads an empty error stream as success)."""
    if not raw:
        return None
    if not uses_status_json(protocol):
        return {"message": raw.decode("utf-8", "replace")}
    try:
        status = json.loads(raw)
    except ValueError as err:
        raise StatusParseError(f"error stream is not a JSON Status: {raw!r}") from err
    if not isinstance(status, dict):
        raise StatusParseError(f"error stream is not a JSON object: {raw!r}")
    return status


def exit_code(status: dict[str, Any] | None) -> int | None:
    """0 for success (or no status), the code of a NonZeroExitCode failure, else ``None``
    (client-go ``errorDecoderV4``: the code is the ``ExitCode`` cause's message, a uint8)."""
    if status is None or status.get("status") == "Success":
        return 0
    if status.get("status") == "Failure" and status.get("reason") == "NonZeroExitCode":
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
    return None


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    #: The parsed error stream (see ``parse_status``).
    status: dict[str, Any] | None
    #: The negotiated protocol (SPDY) or subprotocol (WebSocket).
    protocol: str
    #: The error stream's bytes as received.
    error_raw: bytes = b""
    #: WebSocket only: every (channel, payload) message in arrival order.
    messages: list[tuple[int, bytes]] = field(default_factory=list)
    #: Server slips the client tolerated (see ``SpdyClientConnection.violations``).
    violations: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int | None:
        return exit_code(self.status)


def resize_message(width: int, height: int) -> bytes:
    """One terminal size as client-go's ``json.Encoder`` writes it (no tags, newline-ended)."""
    return json.dumps({"Width": width, "Height": height}, separators=(",", ":")).encode() + b"\n"


async def _chunks(stdin: bytes | AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if isinstance(stdin, bytes):
        if stdin:
            yield stdin
        return
    async for chunk in stdin:
        yield chunk


async def _sizes(
    resize: Sequence[tuple[int, int]] | AsyncIterator[tuple[int, int]],
) -> AsyncIterator[tuple[int, int]]:
    if isinstance(resize, Sequence):
        for size in resize:
            yield size
        return
    async for size in resize:
        yield size


async def _cancel(tasks: Iterable[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, SpdyError):
            await task


# --------------------------------------------------------------------------------------------
# remotecommand over SPDY


def protocol_version(protocol: str) -> int:
    """2..5 for ``vN.channel.k8s.io``; 1 for ``channel.k8s.io`` or none (client-go's fallback)."""
    if protocol.startswith("v") and protocol[1:2].isdigit():
        return int(protocol[1 : protocol.index(".")])
    return 1


async def exec_spdy(
    url: str,
    *,
    stdin: Stdin = None,
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
    resize: Sizes = None,
    protocols: Sequence[str] = REMOTECOMMAND_PROTOCOLS,
    method: str = "POST",
    timeout: float = 60.0,
) -> ExecResult:
    """Run one exec (or attach: same protocol, ``/attach/`` URL) over SPDY and collect it.

    ``stdin`` is sent and then half-closed; an async iterator lets a test pace it. ``resize``
    sizes go on the resize stream, which exists only with a tty on v3+ (as in client-go).
    The whole call is bounded by ``timeout`` (``TimeoutError``).
    """
    connection = await connect(url, list(protocols), method, timeout=timeout)
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.timeout(timeout):
            return await _exec_streams(connection, tasks, stdin, stdout, stderr, tty, resize)
    finally:
        await _cancel(tasks)
        await connection.close()


async def _exec_streams(
    connection: SpdyClientConnection,
    tasks: list[asyncio.Task[Any]],
    stdin: Stdin,
    stdout: bool,
    stderr: bool,
    tty: bool,
    resize: Sizes,
) -> ExecResult:
    async def open_stream(kind: str) -> ClientStream:
        return await connection.open_stream({"streamtype": kind})

    error_stream = await open_stream("error")
    stdin_stream = await open_stream("stdin") if stdin is not None else None
    stdout_stream = await open_stream("stdout") if stdout else None
    stderr_stream = await open_stream("stderr") if stderr and not tty else None
    resize_stream = None
    if tty and protocol_version(connection.protocol) >= 3:
        resize_stream = await open_stream("resize")

    loop = asyncio.get_running_loop()
    # Like client-go, the error stream is drained from the start and judged at the end.
    error_read = loop.create_task(error_stream.read_all())
    tasks.append(error_read)
    if resize_stream is not None and resize is not None:
        if isinstance(resize, Sequence):  # written before stdin, as handleResizes runs first
            for width, height in resize:
                await resize_stream.write(resize_message(width, height))
        else:
            tasks.append(loop.create_task(_send_sizes(resize_stream, resize)))
    if stdin_stream is not None and stdin is not None:
        tasks.append(loop.create_task(_send_stdin(stdin_stream, stdin)))

    async def read(stream: ClientStream | None) -> bytes:
        return await stream.read_all() if stream is not None else b""

    out, err = await asyncio.gather(read(stdout_stream), read(stderr_stream))
    error_raw = await error_read
    return ExecResult(
        stdout=out,
        stderr=err,
        status=parse_status(connection.protocol, error_raw),
        protocol=connection.protocol,
        error_raw=error_raw,
        violations=connection.violations,
    )


async def _send_stdin(stream: ClientStream, stdin: bytes | AsyncIterator[bytes]) -> None:
    async for chunk in _chunks(stdin):
        await stream.write(chunk)
    await stream.close()


async def _send_sizes(stream: ClientStream, resize: AsyncIterator[tuple[int, int]]) -> None:
    async for width, height in resize:
        await stream.write(resize_message(width, height))


attach_spdy = exec_spdy


# --------------------------------------------------------------------------------------------
# WebSocket (RFC 6455), client side

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketError(SpdyError):
    """A failed WebSocket handshake or a broken frame from the server."""


def ws_accept(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``Sec-WebSocket-Key: key``."""
    return b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte masking key (its own inverse)."""
    if len(key) != 4:
        raise ValueError("a masking key is 4 bytes")
    size = len(payload)
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def ws_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    masked: bool = True,
    mask_key: bytes | None = None,
    rsv: int = 0,
) -> bytes:
    """One frame; clients must mask (a random key unless ``mask_key``), ``masked=False`` makes
    server-style frames for tests."""
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode & 0x0F
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = struct.pack(">BB", first, mask_bit | size)
    elif size < 1 << 16:
        head = struct.pack(">BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack(">BBQ", first, mask_bit | 127, size)
    if not masked:
        return head + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    return head + key + mask(payload, key)


@dataclass(frozen=True)
class WsFrame:
    fin: bool
    opcode: int
    payload: bytes
    masked: bool = False
    rsv: int = 0


async def read_ws_frame(reader: asyncio.StreamReader) -> WsFrame:
    """The next frame, unmasked; ``asyncio.IncompleteReadError`` at EOF."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack(">H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack(">Q", await reader.readexactly(8))
    masked = bool(second & 0x80)
    key = await reader.readexactly(4) if masked else b""
    payload = await reader.readexactly(size)
    if masked:
        payload = mask(payload, key)
    return WsFrame(bool(first & 0x80), first & 0x0F, payload, masked, (first >> 4) & 0x7)


@dataclass(frozen=True)
class WsMessage:
    opcode: int  # OP_TEXT or OP_BINARY
    data: bytes


class WebSocketConnection:
    """A client WebSocket over an upgraded TCP connection; see ``ws_connect``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        subprotocol: str,
        response_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.subprotocol = subprotocol
        self.response_headers = list(response_headers)
        #: The server's close code and reason, once it sent a close frame.
        self.close_code: int | None = None
        self.close_reason = ""
        #: Frames that broke RFC 6455 (masked by the server, reserved bits, bad continuation).
        self.violations: list[str] = []
        self._reader = reader
        self._writer = writer
        self._close_sent = False
        self._ended = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def base64(self) -> bool:
        return "base64" in self.subprotocol

    async def send_raw(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def send(self, opcode: int, payload: bytes) -> None:
        await self.send_raw(ws_frame(opcode, payload))

    async def send_channel(self, channel: int, payload: bytes) -> None:
        """One channel message in this connection's framing (base64 ones go as text)."""
        opcode = OP_TEXT if self.base64 else OP_BINARY
        await self.send(opcode, encode_channel(channel, payload, base64=self.base64))

    async def receive(self) -> WsMessage | None:
        """The next text or binary message (fragments joined, pings answered); ``None`` once
        the server closed (its close frame is answered) or the TCP connection ended."""
        if self._ended:
            return None
        parts: list[bytes] = []
        opcode = None
        while True:
            try:
                frame = await read_ws_frame(self._reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                self._ended = True
                return None
            if frame.masked:
                self.violations.append("server frame is masked")
            if frame.rsv:
                self.violations.append(f"reserved bits {frame.rsv} set")
            if frame.opcode == OP_PING:
                await self.send(OP_PONG, frame.payload)
            elif frame.opcode == OP_CLOSE:
                self._ended = True
                if len(frame.payload) >= 2:
                    (self.close_code,) = struct.unpack(">H", frame.payload[:2])
                    self.close_reason = frame.payload[2:].decode("utf-8", "replace")
                if not self._close_sent:
                    self._close_sent = True
                    with contextlib.suppress(ConnectionError):
                        await self.send(OP_CLOSE, frame.payload[:2])
                return None
            elif frame.opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
                if (frame.opcode == OP_CONTINUATION) != (opcode is not None):
                    self.violations.append(f"unexpected frame opcode {frame.opcode} mid-message")
                opcode = opcode if opcode is not None else frame.opcode
                parts.append(frame.payload)
                if frame.fin:
                    return WsMessage(opcode, b"".join(parts))
            elif frame.opcode != OP_PONG:
                self.violations.append(f"unknown opcode {frame.opcode}")

    def abort(self) -> None:
        """Drop the TCP connection at once, unsent data and all, as a killed client does."""
        self._ended = True
        self._close_sent = True
        self._writer.transport.abort()

    async def close(self, code: int = 1000, timeout: float = 5.0) -> None:
        """Send a close frame (once), wait briefly for the server's, then drop the socket."""
        if not self._close_sent and not self._writer.is_closing():
            self._close_sent = True
            with contextlib.suppress(ConnectionError):
                await self.send(OP_CLOSE, struct.pack(">H", code))
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(timeout):
                    while await self.receive() is not None:
                        pass
        self._ended = True
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


async def ws_connect(
    url: str,
    subprotocols: Sequence[str],
    *,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 30.0,
) -> WebSocketConnection:
    """The RFC 6455 handshake (GET, version 13, a random key whose accept value is checked);
    the server must pick one of ``subprotocols`` (none offered: it must pick none)."""
    key = b64encode(os.urandom(16)).decode()
    request = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    if subprotocols:
        request.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    response = await http_upgrade(url, "GET", [*request, *headers], timeout=timeout)
    try:
        if (response.get("Upgrade") or "").lower() != "websocket":
            raise WebSocketError(f"101 without Upgrade: websocket: {response.headers}")
        if "upgrade" not in ",".join(response.get_all("Connection")).lower():
            raise WebSocketError(f"101 without Connection: Upgrade: {response.headers}")
        if response.get("Sec-WebSocket-Accept") != ws_accept(key):
            raise WebSocketError(f"wrong Sec-WebSocket-Accept: {response.headers}")
        chosen = response.get("Sec-WebSocket-Protocol") or ""
        if chosen not in (subprotocols or [""]):
            raise WebSocketError(f"server chose subprotocol {chosen!r}; offered {subprotocols}")
    except BaseException:
        response.writer.close()
        raise
    return WebSocketConnection(response.reader, response.writer, chosen, response.headers)


# --------------------------------------------------------------------------------------------
# channel.k8s.io framing


def encode_channel(channel: int, payload: bytes, *, base64: bool = False) -> bytes:
    """``[channel] + payload``, or ``'0'+channel`` and the payload in base64."""
    if base64:
        return bytes([ord("0") + channel]) + b64encode(payload)
    return bytes([channel]) + payload


def decode_channel(message: bytes, *, base64: bool = False) -> tuple[int, bytes]:
    """The inverse of ``encode_channel``."""
    if not message:
        raise ValueError("an empty message names no channel")
    if base64:
        return message[0] - ord("0"), b64decode(message[1:], validate=True)
    return message[0], message[1:]


def channel_frames(messages: Iterable[bytes], *, base64: bool = False) -> list[tuple[int, bytes]]:
    """Decode received channel messages into (channel, payload) pairs, in order."""
    return [decode_channel(message, base64=base64) for message in messages]


def join_channels(frames: Iterable[tuple[int, bytes]]) -> dict[int, bytes]:
    """Each channel's payloads concatenated."""
    joined: dict[int, bytearray] = {}
    for channel, payload in frames:
        joined.setdefault(channel, bytearray()).extend(payload)  # linear, not b"" + b""
    return {channel: bytes(data) for channel, data in joined.items()}


def with_query(url: str, params: Mapping[str, Sequence[str]]) -> str:
    """``url`` with ``params`` appended to its query (repeated keys for several values)."""
    parts = urllib.parse.urlsplit(url)
    extra = urllib.parse.urlencode(
        [(key, value) for key, values in params.items() for value in values]
    )
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit(parts._replace(query=query))


# --------------------------------------------------------------------------------------------
# remotecommand over WebSocket


async def exec_websocket(
    url: str,
    *,
    subprotocol: str = "v4.channel.k8s.io",
    stdin: Stdin = None,
    resize: Sizes = None,
    timeout: float = 60.0,
) -> ExecResult:
    """Run one exec (or attach) over WebSocket and collect every channel until the server
    closes. Which streams exist is the CRI request's business, not the client's here.

    ``subprotocol=""`` offers none (the server then uses binary framing). After stdin, v5
    sends ``[255, 0]``; older subprotocols have no way to say EOF.
    """
    ws = await ws_connect(url, [subprotocol] if subprotocol else [], timeout=timeout)
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.timeout(timeout):
            loop = asyncio.get_running_loop()
            if resize is not None:
                tasks.append(loop.create_task(_ws_send_sizes(ws, resize)))
            if stdin is not None:
                tasks.append(loop.create_task(_ws_send_stdin(ws, stdin)))
            messages = []
            while (message := await ws.receive()) is not None:
                if message.data:  # a v5 close signal from the server would start with 255
                    messages.append(decode_channel(message.data, base64=ws.base64))
    finally:
        await _cancel(tasks)
        await ws.close()
    channels = join_channels(messages)
    error_raw = channels.get(ERROR, b"")
    return ExecResult(
        stdout=channels.get(STDOUT, b""),
        stderr=channels.get(STDERR, b""),
        status=parse_status(ws.subprotocol, error_raw),
        protocol=ws.subprotocol,
        error_raw=error_raw,
        messages=messages,
        violations=ws.violations,
    )


async def _ws_send_stdin(ws: WebSocketConnection, stdin: bytes | AsyncIterator[bytes]) -> None:
    async for chunk in _chunks(stdin):
        await ws.send_channel(STDIN, chunk)
    if ws.subprotocol.startswith("v5."):
        await ws.send(OP_BINARY, bytes([CLOSE_SIGNAL, STDIN]))


async def _ws_send_sizes(
    ws: WebSocketConnection, resize: Sequence[tuple[int, int]] | AsyncIterator[tuple[int, int]]
) -> None:
    async for width, height in _sizes(resize):
        await ws.send_channel(RESIZE, resize_message(width, height))


attach_websocket = exec_websocket
