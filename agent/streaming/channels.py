"""``channel.k8s.io`` multiplexing: numbered channels over one WebSocket.

Each message belongs to one channel: binary protocols prefix the payload with
the channel byte; the ``base64.`` variants send text, ``'0' + channel``
followed by the base64 of the payload. For remotecommand the channels are
0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; port-forward uses 2i / 2i+1
for the data / error of the i-th port. Channels have no half-close in these
protocols, except v5 (``[255, channel]`` closes a channel): otherwise a
stream ends with the connection.

Memory: messages are routed piece by piece as the WebSocket delivers them,
into an ``Inbox`` per input channel the session reads; all inboxes of a
connection share one budget, and the router stops reading the WebSocket
while the target is full. Messages for any other channel (stdout, the
resize channel of an exec without a tty, a channel nobody named) are
dropped unread, as the kubelet's ``wsstream`` does for its ignored channels.
When the connection ends every inbox is aborted and what it held released.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from agent.streaming.inbox import Inbox, InboxBudget
from agent.streaming.websocket import Piece, WebSocket

__all__ = ["ChannelOutput", "WsChannels"]

_CLOSE_SIGNAL = 255


class ChannelOutput:
    def __init__(self, channels: WsChannels, channel: int) -> None:
        self._channels = channels
        self.channel = channel

    async def write(self, data: bytes) -> None:
        await self._channels.send(self.channel, data)

    async def close(self) -> None:
        """No per-channel close in v1-v4: the end is the connection's."""


class _Base64Pieces:
    """Decodes one message's base64 text as it arrives, four characters at a time."""

    def __init__(self) -> None:
        self._tail = b""
        self._padded = False

    def decode(self, text: bytes, last: bool) -> bytes:
        """The bytes of the complete groups so far; ValueError if it is not base64."""
        text = self._tail + text
        cut = len(text) if last else len(text) - len(text) % 4
        self._tail = text[cut:]
        if self._padded and cut:
            raise ValueError("base64 data after its padding")
        group = text[:cut]
        self._padded = group.endswith(b"=")
        try:
            return base64.b64decode(group, validate=True)
        except binascii.Error as exc:
            raise ValueError(str(exc)) from None


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
        self.budget = InboxBudget()
        self._inputs = {channel: Inbox(self.budget) for channel in inputs}
        # The message being routed.
        self._channel: int | None = None
        self._target: Inbox | None = None
        self._decoder: _Base64Pieces | None = None
        self._signal = b""

    def input(self, channel: int) -> Inbox:
        return self._inputs[channel]

    def output(self, channel: int) -> ChannelOutput:
        return ChannelOutput(self, channel)

    async def send(self, channel: int, data: bytes) -> None:
        if self.base64:
            await self.ws.send(bytes([0x30 + channel]), base64.b64encode(data), text=True)
        else:
            await self.ws.send(bytes([channel]), data)

    async def run(self) -> None:
        """Route incoming messages to their channels until the connection ends."""
        try:
            while (piece := await self.ws.receive()) is not None:
                await self._route(piece)
        except ConnectionError:
            pass  # the client went away while its channels were full
        finally:
            for target in self._inputs.values():
                target.abort()
            self.gone.set()

    async def _route(self, piece: Piece) -> None:
        data = piece.data
        if piece.first:
            self._channel = None
        if self._channel is None and data:  # the message's first byte names its channel
            self._start(data[0])
            data = data[1:]
        if self._channel == _CLOSE_SIGNAL and self.close_signals:
            self._signal = (self._signal + data)[:2]
            if piece.last and len(self._signal) == 1:
                closing = self._inputs.get(self._signal[0])
                if closing is not None:
                    closing.end()
        elif self._target is not None:
            if self._decoder is not None:
                try:
                    data = self._decoder.decode(data, piece.last)
                except ValueError:
                    self._target = None  # not base64: the rest of the message is dropped
                    data = b""
            if data and self._target is not None:
                self._target.feed(data)
                await self.ws.wait_for_room(self._target)
        if piece.last:
            self._channel = self._target = self._decoder = None

    def _start(self, first: int) -> None:
        self._channel = first
        self._signal = b""
        self._decoder = None
        if self.close_signals and first == _CLOSE_SIGNAL:
            self._target = None
            return
        if self.base64:
            self._channel = first - 0x30
            self._decoder = _Base64Pieces()
        self._target = self._inputs.get(self._channel)
        if self._target is not None and (self._target.ended or self._target.discarding):
            self._target = None

    async def close(self) -> None:
        await self.ws.close()
