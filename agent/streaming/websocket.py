"""RFC 6455 WebSocket, server side: the handshake and message framing.

The ``channel.k8s.io`` protocols ride on whole messages (the first byte, or
the first character in the base64 variants, names the channel), so this
module deals in messages: fragments are joined, pings answered, and a close
frame, an unmasked client frame or a message over the size limit ends the
connection. Only what the kubelet's ``wsstream`` needs is here: no
extensions, no compression.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import struct

from agent.streaming.http import Request

__all__ = [
    "BINARY",
    "TEXT",
    "ProtocolError",
    "WebSocket",
    "accept_key",
    "is_websocket_request",
]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG = 1000, 1002, 1009
#: Larger messages end the connection (kubectl sends stdin in 32 KiB pieces).
MAX_MESSAGE = 16 << 20


class ProtocolError(Exception):
    pass


def is_websocket_request(request: Request) -> bool:
    return "websocket" in request.header("upgrade").lower()


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()


class WebSocket:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        idle_timeout: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._idle_timeout = idle_timeout
        self._send_lock = asyncio.Lock()
        self.closed = False

    async def receive(self) -> tuple[int, bytes] | None:
        """The next data message as (opcode, payload); None once the connection ended."""
        opcode = 0
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                fin, frame_opcode, payload = await self._read_frame()
                if frame_opcode >= CLOSE:
                    if not await self._control(frame_opcode, payload):
                        return None
                    continue
                if frame_opcode == CONTINUATION:
                    if not parts and not opcode:
                        raise ProtocolError("continuation without a message")
                elif opcode:
                    raise ProtocolError("new message inside a fragmented one")
                else:
                    opcode = frame_opcode
                size += len(payload)
                if size > MAX_MESSAGE:
                    await self.close(CLOSE_TOO_BIG, "message too big")
                    return None
                parts.append(payload)
                if fin:
                    return opcode, b"".join(parts)
        except ProtocolError as exc:
            await self.close(CLOSE_PROTOCOL_ERROR, str(exc)[:100])
            return None
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            self._abort()
            return None

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        head = await self._read(2)
        fin, opcode = bool(head[0] & 0x80), head[0] & 0x0F
        if head[0] & 0x70:
            raise ProtocolError("reserved bits set")
        if not head[1] & 0x80:
            raise ProtocolError("client frames must be masked")
        length = head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", await self._read(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", await self._read(8))
        if opcode >= CLOSE and (length > 125 or not fin):
            raise ProtocolError("invalid control frame")
        if opcode not in (CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG):
            raise ProtocolError(f"unknown opcode {opcode}")
        if length > MAX_MESSAGE:
            raise ProtocolError("frame too big")
        mask = await self._read(4)
        payload = await self._read(length) if length else b""
        return fin, opcode, _unmask(payload, mask)

    async def _read(self, n: int) -> bytes:
        return await asyncio.wait_for(self._reader.readexactly(n), self._idle_timeout)

    async def _control(self, opcode: int, payload: bytes) -> bool:
        if opcode == PING:
            await self._send_frame(PONG, payload)
        elif opcode == CLOSE:
            code = payload[:2] if len(payload) >= 2 else struct.pack(">H", CLOSE_NORMAL)
            await self.close(struct.unpack(">H", code)[0])
            return False
        return True

    async def send(self, opcode: int, payload: bytes) -> None:
        await self._send_frame(opcode, payload)

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("the WebSocket is closed")
        length = len(payload)
        if length < 126:
            head = struct.pack(">BB", 0x80 | opcode, length)
        elif length < 1 << 16:
            head = struct.pack(">BBH", 0x80 | opcode, 126, length)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 127, length)
        async with self._send_lock:
            self._writer.write(head + payload)
            await self._writer.drain()

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
            await asyncio.wait_for(
                self._send_frame(CLOSE, struct.pack(">H", code) + reason.encode()[:120]), 5
            )
        self._abort()

    def _abort(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self._writer.close()


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    # XOR with the repeated 4-byte key, done as one big integer operation (fast in CPython).
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(
        len(payload), "big"
    )
