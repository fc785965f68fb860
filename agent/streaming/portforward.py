"""Port-forward: TCP connections into a pod's network namespace, over SPDY or WebSocket.

SPDY (``portforward.k8s.io``): one connection carries any number of forwarded
TCP connections. For each, the client opens an ``error`` and a ``data`` stream
with the same ``port`` and ``requestid`` headers; once both are here we dial
``127.0.0.1:<port>`` (``[::1]`` as a fallback) inside the pod's namespace and
copy bytes both ways, half-closes included. A failure is written as text on
the error stream. A pair left incomplete past the creation timeout is failed.

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
from dataclasses import dataclass, field
from typing import Any

from agent.network import netns
from agent.streaming.channels import ChannelInput, ChannelOutput, WsChannels
from agent.streaming.spdy import SpdyConnection, SpdyStream

__all__ = ["dial", "serve_spdy", "serve_websocket", "valid_port"]

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


async def _copy_in(source: SpdyStream | ChannelInput, writer: asyncio.StreamWriter) -> None:
    """Client → pod; the client's EOF half-closes the TCP connection."""
    while data := await source.read():
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _copy_out(reader: asyncio.StreamReader, sink: SpdyStream | ChannelOutput) -> None:
    """Pod → client; the pod's EOF closes the client's stream."""
    while data := await reader.read(_COPY_CHUNK):
        await sink.write(data)
    await sink.close()


async def _forward(
    sock: socket.socket, source: SpdyStream | ChannelInput, sink: SpdyStream | ChannelOutput
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
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    started: bool = False
    created: float = field(default=0.0)


def accept_stream(stream: SpdyStream) -> bool:
    """Only data/error streams for a valid port are accepted (others get RST_STREAM)."""
    return stream.header("streamtype") in ("data", "error") and (
        valid_port(stream.header("port")) is not None
    )


def _request_id(stream: SpdyStream) -> str:
    explicit = stream.header("requestid")
    if explicit:
        return explicit
    # Old clients send no request id: the error stream comes just before its data stream.
    return str(stream.id if stream.header("streamtype") == "error" else stream.id - 2)


async def serve_spdy(
    connection: SpdyConnection, dialer: Dialer, *, creation_timeout: float, describe: str
) -> None:
    """Pair the streams the client opens and forward each pair, until the connection ends."""
    pairs: dict[str, _Pair] = {}
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
            pairs.pop(request_id, None)
            for stream in (pair.data, pair.error):
                await stream.close()

    async def expire_incomplete() -> None:
        while True:
            await asyncio.sleep(min(creation_timeout, 1.0))
            now = loop.time()
            for request_id, pair in list(pairs.items()):
                if not pair.started and now - pair.created > creation_timeout:
                    pairs.pop(request_id, None)
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
            port = valid_port(stream.header("port"))
            assert port is not None
            pair = pairs.get(request_id)
            if pair is None:
                pair = pairs[request_id] = _Pair(port, created=loop.time())
            kind = stream.header("streamtype")
            if getattr(pair, kind) is not None or pair.port != port:
                await stream.cancel()  # a duplicate, or the other half names another port
                continue
            setattr(pair, kind, stream)
            if pair.data is not None and pair.error is not None and not pair.started:
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
        await channels.close()
        router.cancel()
        await asyncio.gather(router, return_exceptions=True)
