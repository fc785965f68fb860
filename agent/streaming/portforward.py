"""Port-forward: TCP connections into a pod's network namespace, over SPDY or WebSocket.

SPDY (``portforward.k8s.io``): one connection carries any number of forwarded
TCP connections. For each, the client opens an ``error`` and a ``data`` stream
with the same ``port`` and ``requestid`` headers; once both are here we dial
``127.0.0.1:<port>`` (``[::1]`` as a fallback) inside the pod's namespace and
copy bytes both ways, half-closes included. A failure is written as text on
the error stream. A pair left incomplete past the creation timeout is failed.
``SpdyPairs.accept`` refuses, before they exist, streams that do not fit a
pair: another type, a bad port, a second ``error`` or ``data`` for a request
id, or a half naming another port than its partner. What a client sends on an
error stream is dropped unread, and so is what comes on a data stream after
its forward ended.

WebSocket (``v4.channel.k8s.io`` family): one TCP connection per port named in
the URL query; channel 2i carries port i's data and 2i+1 its errors, and the
first message on each is the port, uint16 little-endian.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent.network import netns
from agent.streaming.channels import ChannelOutput, WsChannels
from agent.streaming.inbox import Inbox
from agent.streaming.spdy import SpdyConnection, SpdyStream

__all__ = ["SpdyPairs", "dial", "serve_spdy", "serve_websocket", "valid_port"]

log = logging.getLogger(__name__)

_DIAL_TIMEOUT = 10.0
_COPY_CHUNK = 64 * 1024

Dialer = Callable[[int], Awaitable[socket.socket]]


def valid_port(text: str) -> int | None:
    try:
        port = int(text, 10)
    except ValueError:
        return None
    return port if 1 <= port <= 0xFFFF and text.isdigit() else None


async def dial(netns_path: str, port: int) -> socket.socket:
    """A connected socket to ``localhost:<port>`` in the namespace ("" = the host's)."""
    loop = asyncio.get_running_loop()
    failure: OSError | None = None
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        if netns_path:
            sock = await netns.socket_in(netns_path, family, socket.SOCK_STREAM)
        else:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), _DIAL_TIMEOUT)
            return sock
        except (OSError, TimeoutError) as exc:
            sock.close()
            if failure is None:  # the IPv4 error is the one worth reporting
                code = exc.errno if isinstance(exc, OSError) else None
                reason = os.strerror(code) if code else "timed out"
                failure = OSError(f"dial tcp {host}:{port}: connect: {reason.lower()}")
    assert failure is not None
    raise failure


async def _copy_in(source: SpdyStream | Inbox, writer: asyncio.StreamWriter) -> None:
    """Client → pod; the client's EOF half-closes the TCP connection."""
    try:
        while data := await source.read():
            writer.write(data)
            await writer.drain()
    finally:
        source.discard()  # whatever comes now has nowhere to go
    if writer.can_write_eof():
        writer.write_eof()


async def _copy_out(reader: asyncio.StreamReader, sink: SpdyStream | ChannelOutput) -> None:
    """Pod → client; the pod's EOF closes the client's stream."""
    while data := await reader.read(_COPY_CHUNK):
        await sink.write(data)
    await sink.close()


async def _forward(
    sock: socket.socket, source: SpdyStream | Inbox, sink: SpdyStream | ChannelOutput
) -> None:
    reader, writer = await asyncio.open_connection(sock=sock, limit=_COPY_CHUNK)
    try:
        await asyncio.gather(_copy_in(source, writer), _copy_out(reader, sink))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


# -- SPDY ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Pair:
    port: int
    #: when its first half came through the queue: the creation timeout runs from then
    #: (the kubelet starts its pair timer there too)
    created: float | None = None
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    #: halves that came through the connection's queue (their SYN_REPLY is out)
    replied: int = 0
    started: bool = False


def _request_id(stream: SpdyStream) -> str:
    explicit = stream.header("requestid")
    if explicit:
        return explicit
    # Old clients send no request id: the error stream comes just before its data stream.
    return str(stream.id if stream.header("streamtype") == "error" else stream.id - 2)


class SpdyPairs:
    """The error+data pairs of one connection, as the client opens their streams."""

    def __init__(self) -> None:
        self.pairs: dict[str, _Pair] = {}

    def accept(self, stream: SpdyStream) -> bool:
        """Take a stream into its pair, or refuse it (RST_STREAM) if it fits none."""
        kind = stream.header("streamtype")
        port = valid_port(stream.header("port"))
        if kind not in ("data", "error") or port is None:
            return False
        request_id = _request_id(stream)
        pair = self.pairs.get(request_id)
        if pair is None:
            pair = self.pairs[request_id] = _Pair(port)
        elif getattr(pair, kind) is not None or pair.port != port:
            return False  # a second half of one kind, or halves naming two ports
        setattr(pair, kind, stream)
        if kind == "error":
            stream.discard()  # the client never writes to it
        return True


async def serve_spdy(
    connection: SpdyConnection,
    pairs: SpdyPairs,
    dialer: Dialer,
    *,
    creation_timeout: float,
    describe: str,
) -> None:
    """Forward each pair the client completes, until the connection ends."""
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def run_pair(request_id: str, pair: _Pair) -> None:
        assert pair.data is not None
        assert pair.error is not None
        try:
            sock = await dialer(pair.port)
        except OSError as exc:
            message = f"error forwarding port {pair.port} to pod {describe}: {exc}"
            log.info("%s", message)
            with contextlib.suppress(ConnectionError):
                await pair.error.write(message.encode())
        else:
            try:
                await _forward(sock, pair.data, pair.data)
            except (ConnectionError, OSError) as exc:
                message = f"error forwarding port {pair.port} to pod {describe}: {exc}"
                log.info("%s", message)
                with contextlib.suppress(ConnectionError):
                    await pair.error.write(message.encode())
        finally:
            pairs.pairs.pop(request_id, None)
            for stream in (pair.data, pair.error):
                stream.discard()
                await stream.close()

    async def expire_incomplete() -> None:
        while True:
            await asyncio.sleep(min(creation_timeout, 1.0))
            now = loop.time()
            for request_id, pair in list(pairs.pairs.items()):
                late = pair.created is not None and now - pair.created > creation_timeout
                if late and not pair.started:
                    pairs.pairs.pop(request_id, None)
                    message = f"timed out waiting for the streams of request {request_id}"
                    for stream in (pair.error, pair.data):
                        if stream is not None:
                            with contextlib.suppress(ConnectionError):
                                await stream.write(message.encode())
                            await stream.cancel()

    closed = asyncio.ensure_future(connection.closed.wait())
    reaper = asyncio.ensure_future(expire_incomplete())
    try:
        while True:
            incoming = asyncio.ensure_future(connection.incoming.get())
            await asyncio.wait({incoming, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not incoming.done():
                incoming.cancel()
                break
            stream = incoming.result()
            request_id = _request_id(stream)
            pair = pairs.pairs.get(request_id)
            if pair is None or (stream is not pair.data and stream is not pair.error):
                continue  # its pair expired meanwhile
            pair.replied += 1
            if pair.created is None:
                pair.created = loop.time()
            # No DATA before a SYN_REPLY: start once both halves came through the queue.
            if pair.replied == 2 and not pair.started:
                pair.started = True
                task = asyncio.ensure_future(run_pair(request_id, pair))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        closed.cancel()
        reaper.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(reaper, *tasks, return_exceptions=True)


# -- WebSocket ------------------------------------------------------------------------


async def serve_websocket(
    channels: WsChannels, ports: list[int], dialer: Dialer, *, describe: str
) -> None:
    """Forward one TCP connection per port; close the WebSocket when all have ended."""

    async def forward_port(index: int, port: int) -> None:
        data_out, error_out = channels.output(2 * index), channels.output(2 * index + 1)
        try:
            sock = await dialer(port)
        except OSError as exc:
            channels.input(2 * index).discard()
            message = f"error forwarding port {port} to pod {describe}: {exc}"
            with contextlib.suppress(ConnectionError):
                await error_out.write(message.encode())
            return
        with contextlib.suppress(ConnectionError, OSError):
            await _forward(sock, channels.input(2 * index), data_out)

    router = asyncio.ensure_future(channels.run())
    try:
        for index, port in enumerate(ports):
            prefix = struct.pack("<H", port)
            await channels.send(2 * index, prefix)
            await channels.send(2 * index + 1, prefix)
        forwards = asyncio.gather(*(forward_port(i, p) for i, p in enumerate(ports)))
        gone = asyncio.ensure_future(channels.gone.wait())
        waiting: set[asyncio.Future[Any]] = {forwards, gone}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not forwards.done():
            forwards.cancel()
        await asyncio.gather(forwards, return_exceptions=True)
    except ConnectionError:
        pass
    finally:
        router.cancel()  # close() reads the client's answer itself
        await asyncio.gather(router, return_exceptions=True)
        await channels.close()
