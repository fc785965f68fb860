"""``channel.k8s.io`` multiplexing: numbered channels over one WebSocket.

Each message belongs to one channel: binary protocols prefix the payload with
the channel byte; the ``base64.`` variants send text, ``'0' + channel``
followed by the base64 of the payload. For remotecommand the channels are
0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; port-forward uses 2i / 2i+1
for the data / error of the i-th port. Channels have no half-close in these
protocols, except v5 (``[255, channel]`` closes a channel): otherwise a
stream ends with the connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib

from agent.streaming.websocket import BINARY, TEXT, WebSocket

__all__ = ["ChannelInput", "ChannelOutput", "WsChannels"]

#: Messages queued per input channel before the connection stops reading.
_QUEUE_DEPTH = 64
_EOF = b""
_CLOSE_SIGNAL = 255


class ChannelInput:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(_QUEUE_DEPTH)
        self._closed = False

    async def read(self) -> bytes:
        if self._closed and self._queue.empty():
            return _EOF
        data = await self._queue.get()
        if data is _EOF:
            self._closed = True
        return data

    async def _put(self, data: bytes) -> None:
        if data and not self._closed:
            await self._queue.put(data)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_EOF)


class ChannelOutput:
    def __init__(self, channels: WsChannels, channel: int) -> None:
        self._channels = channels
        self.channel = channel

    async def write(self, data: bytes) -> None:
        await self._channels.send(self.channel, data)

    async def close(self) -> None:
        """No per-channel close in v1-v4: the end is the connection's."""


class WsChannels:
    def __init__(
        self,
        ws: WebSocket,
        *,
        base64_framing: bool,
        inputs: list[int],
        close_signals: bool = False,
    ) -> None:
        self.ws = ws
        self.base64 = base64_framing
        #: v5: a binary message [255, channel] half-closes that channel
        self.close_signals = close_signals
        self.gone = asyncio.Event()
        self._inputs = {channel: ChannelInput() for channel in inputs}

    def input(self, channel: int) -> ChannelInput:
        return self._inputs[channel]

    def output(self, channel: int) -> ChannelOutput:
        return ChannelOutput(self, channel)

    async def send(self, channel: int, data: bytes) -> None:
        if self.base64:
            await self.ws.send(TEXT, bytes([0x30 + channel]) + base64.b64encode(data))
        else:
            await self.ws.send(BINARY, bytes([channel]) + data)

    async def run(self) -> None:
        """Route incoming messages to their channels until the connection ends."""
        try:
            while (message := await self.ws.receive()) is not None:
                _, payload = message
                if not payload:
                    continue
                channel, data = payload[0], payload[1:]
                if self.close_signals and channel == _CLOSE_SIGNAL and len(data) == 1:
                    if (closing := self._inputs.get(data[0])) is not None:
                        closing._close()
                    continue
                if self.base64:
                    channel -= 0x30
                    try:
                        data = base64.b64decode(data, validate=True)
                    except (binascii.Error, ValueError):
                        continue
                target = self._inputs.get(channel)
                if target is not None:
                    await target._put(data)
        finally:
            for target in self._inputs.values():
                target._close()
            self.gone.set()

    async def close(self) -> None:
        await self.ws.close()
