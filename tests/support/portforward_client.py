"""Port-forward clients over SPDY and WebSocket, independent of the agent's server.

SPDY ``portforward.k8s.io`` (protocols.md §3.7, client-go ``tools/portforward``): one SPDY
connection carries many forwarded TCP connections. For each, the error stream is opened first
(``streamtype: error``, ``port``, ``requestid``) and half-closed at once, since the client never
writes to it; then the data stream with the same headers and ``streamtype: data``. Whatever the
server writes on the error stream is its error text (plain, not JSON). Request ids count from 0,
like client-go's ``nextRequestID``.

WebSocket (kubelet ``pkg/cri/streaming/portforward/websocket.go``): one WebSocket serves a set
of ports with one connection each. Channel ``2i`` carries port ``i``'s data and ``2i+1`` its
error text, and the server starts each channel with the port as uint16 little-endian. The
client cannot half-close a channel; the server closes the WebSocket when every port is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from tests.support.remotecommand_client import (
    WebSocketConnection,
    decode_channel,
    with_query,
    ws_connect,
)
from tests.support.spdy_client import (
    REPLY_TIMEOUT,
    ClientStream,
    SpdyClientConnection,
    SpdyError,
    connect,
)

PORTFORWARD_PROTOCOL = "portforward.k8s.io"
WEBSOCKET_PORTFORWARD_PROTOCOLS = ("v4.channel.k8s.io", "v4.base64.channel.k8s.io")

# --------------------------------------------------------------------------------------------
# SPDY


class ForwardedConnection:
    """One forwarded TCP connection: a reader and writer on its data stream, and the error
    stream the server reports failures on."""

    def __init__(
        self, request_id: int, port: int, error_stream: ClientStream, data_stream: ClientStream
    ):
        self.request_id = request_id
        self.port = port
        self.error_stream = error_stream
        self.data_stream = data_stream

    async def write(self, data: bytes) -> None:
        await self.data_stream.write(data)

    async def close_write(self) -> None:
        """Half-close the data stream: the server should shut down its socket's write side."""
        await self.data_stream.close()

    async def read(self, max_bytes: int = -1) -> bytes:
        """Data from the forwarded port; ``b""`` once the data stream ended."""
        return await self.data_stream.read(max_bytes)

    async def read_exactly(self, size: int) -> bytes:
        return await self.data_stream.read_exactly(size)

    async def read_all(self, timeout: float | None = None) -> bytes:
        return await self.data_stream.read_all(timeout)

    async def error(self, timeout: float | None = None) -> str:
        """The server's error text for this connection ("" when none), read to the end."""
        return (await self.error_stream.read_all(timeout)).decode("utf-8", "replace")

    async def reset(self) -> None:
        """Reset both streams, as client-go does with the data stream when it is done."""
        await self.data_stream.reset()
        await self.error_stream.reset()


class PortForwardSession:
    """One ``portforward.k8s.io`` SPDY connection; ``open`` may run concurrently."""

    def __init__(self, connection: SpdyClientConnection, port: int):
        self.connection = connection
        self.port = port
        self._request_ids = itertools.count()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(
        self,
        request_id: int | None = None,
        *,
        port: int | None = None,
        timeout: float = REPLY_TIMEOUT,
    ) -> ForwardedConnection:
        """Forward one more connection to ``port`` (the session's by default): the error
        stream first, half-closed, then the data stream. ``StreamRefused`` if the server
        resets either instead of replying."""
        if request_id is None:
            request_id = next(self._request_ids)
        port = self.port if port is None else port
        headers = {"port": str(port), "requestid": str(request_id)}
        error_stream = await self.connection.open_stream(
            {"streamtype": "error", **headers}, timeout=timeout
        )
        await error_stream.close()
        data_stream = await self.connection.open_stream(
            {"streamtype": "data", **headers}, timeout=timeout
        )
        return ForwardedConnection(request_id, port, error_stream, data_stream)

    async def close(self) -> None:
        await self.connection.close()


async def forward_spdy(
    url: str, port: int, *, method: str = "POST", timeout: float = 30.0
) -> PortForwardSession:
    """Upgrade to SPDY offering only ``portforward.k8s.io``; like client-go, anything but that
    protocol echoed back is an error."""
    connection = await connect(url, [PORTFORWARD_PROTOCOL], method, timeout=timeout)
    if connection.protocol != PORTFORWARD_PROTOCOL:
        await connection.close()
        raise SpdyError(f"server negotiated {connection.protocol!r}, not {PORTFORWARD_PROTOCOL}")
    return PortForwardSession(connection, port)


# --------------------------------------------------------------------------------------------
# WebSocket


class _Channel:
    """One channel's bytes, after the 2-byte port prefix the server sends first."""

    def __init__(self) -> None:
        self.prefix = b""
        self.buffer = bytearray()
        self.readable = asyncio.Event()


class WebSocketPortForward:
    """Port-forward over one WebSocket; port ``i`` of ``ports`` is index ``i`` below."""

    def __init__(self, ws: WebSocketConnection, ports: Sequence[int]):
        self.ws = ws
        self.ports = list(ports)
        #: Messages on channels beyond the ports' (a server bug), as (channel, payload).
        self.stray: list[tuple[int, bytes]] = []
        self._channels = [_Channel() for _ in range(2 * len(self.ports))]
        self._closed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

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
    def closed(self) -> bool:
        return self._closed.is_set()

    def announced_port(self, channel: int) -> int | None:
        """The port the server wrote at the start of ``channel`` (uint16 LE), once it came."""
        prefix = self._channels[channel].prefix
        return struct.unpack("<H", prefix)[0] if len(prefix) == 2 else None

    async def send(self, index: int, data: bytes) -> None:
        """Data for port ``index`` (channel ``2 * index``)."""
        await self.ws.send_channel(2 * index, data)

    async def read(self, index: int, max_bytes: int = -1) -> bytes:
        """Data from port ``index`` once any came; ``b""`` once the WebSocket closed."""
        channel = self._channels[2 * index]
        while not channel.buffer and not self.closed:
            channel.readable.clear()
            await channel.readable.wait()
        size = len(channel.buffer) if max_bytes < 0 else min(max_bytes, len(channel.buffer))
        chunk = bytes(channel.buffer[:size])
        del channel.buffer[:size]
        return chunk

    async def read_all(self, index: int, timeout: float | None = None) -> bytes:
        """Port ``index``'s data until the server closes the WebSocket."""
        async with asyncio.timeout(timeout):
            chunks = []
            while chunk := await self.read(index):
                chunks.append(chunk)
            return b"".join(chunks)

    async def error(self, index: int, timeout: float | None = None) -> str:
        """Port ``index``'s error text, complete once the server closed the WebSocket."""
        await self.wait_closed(timeout)
        return bytes(self._channels[2 * index + 1].buffer).decode("utf-8", "replace")

    async def wait_closed(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._closed.wait()

    async def close(self) -> None:
        """Stop reading first: ``ws.close()`` reads the server's close frame itself."""
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()

    async def _read_loop(self) -> None:
        try:
            while (message := await self.ws.receive()) is not None:
                if not message.data:
                    continue
                number, payload = decode_channel(message.data, base64=self.ws.base64)
                if number >= len(self._channels):
                    self.stray.append((number, payload))
                    continue
                channel = self._channels[number]
                if len(channel.prefix) < 2:
                    take = 2 - len(channel.prefix)
                    channel.prefix += payload[:take]
                    payload = payload[take:]
                if payload:
                    channel.buffer += payload
                    channel.readable.set()
        finally:
            self._closed.set()
            for channel in self._channels:
                channel.readable.set()


async def forward_websocket(
    url: str,
    ports: Sequence[int],
    *,
    subprotocol: str = "v4.channel.k8s.io",
    port_query: bool = True,
    timeout: float = 30.0,
) -> WebSocketPortForward:
    """Open a WebSocket port-forward for ``ports``; ``port_query`` appends ``?port=N`` for each
    (the kubelet library's ``NewV4Options``; a CRI server may take the ports from the request
    instead). ``subprotocol=""`` offers none."""
    if port_query:
        url = with_query(url, {"port": [str(port) for port in ports]})
    ws = await ws_connect(url, [subprotocol] if subprotocol else [], timeout=timeout)
    return WebSocketPortForward(ws, ports)
