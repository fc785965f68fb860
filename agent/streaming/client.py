"""The client side of the streaming protocols, for ``model-agent ctl exec -it|attach|port-forward``.

It speaks what kubectl and crictl speak (SPDY/3.1 after an HTTP/1.1 upgrade,
remotecommand v4 or port-forward), using this package's SPDY framing in
client mode. The terminal handling (raw mode, SIGWINCH) lives here too, so
the ctl verbs stay one screen each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import sys
import termios
import tty as ttymode
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from agent.streaming.server import PORTFORWARD_PROTOCOLS, REMOTECOMMAND_PROTOCOLS
from agent.streaming.spdy import SpdyConnection, SpdyStream

__all__ = ["StreamingError", "forward_ports", "remote_command"]

_CHUNK = 32 * 1024


class StreamingError(Exception):
    """The server refused the upgrade or broke the protocol."""


async def _upgrade(url: str, protocols: tuple[str, ...]) -> tuple[SpdyConnection, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise StreamingError(f"not an http:// streaming URL: {url}")
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    lines = [
        f"POST {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Connection: Upgrade",
        "Upgrade: SPDY/3.1",
        *(f"X-Stream-Protocol-Version: {p}" for p in protocols),
        "Content-Length: 0",
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *header_lines = head.rstrip("\r\n").split("\r\n")
    status = int(status_line.split(" ")[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    if status != 101:
        body = await reader.read(4096)
        writer.close()
        raise StreamingError(f"{status_line.strip()}: {body.decode(errors='replace').strip()}")
    protocol = headers.get("x-stream-protocol-version", "")
    if protocol not in protocols:
        writer.close()
        raise StreamingError(f"the server chose protocol {protocol!r}, which was not offered")
    return SpdyConnection(reader, writer, server=False), protocol


def _exit_code(protocol: str, raw: bytes) -> tuple[int, str]:
    """(exit code, message) from the error stream, as client-go reads it."""
    if not raw:
        return 0, ""
    if not protocol.startswith("v4."):
        return 1, raw.decode(errors="replace")
    try:
        status: dict[str, Any] = json.loads(raw)
    except ValueError:
        return 1, raw.decode(errors="replace")
    if status.get("status") == "Success":
        return 0, ""
    if status.get("reason") == "NonZeroExitCode":
        for cause in status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause.get("message", 1)), ""
    return 1, str(status.get("message", raw.decode(errors="replace")))


async def _copy_fd_to_stream(fd: int, stream: SpdyStream) -> None:
    """Local input to the remote process; EOF half-closes the stream."""
    loop = asyncio.get_running_loop()
    pollable = not stat.S_ISREG(os.fstat(fd).st_mode)  # epoll refuses regular files
    while True:
        if pollable:
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _settle, readable)
            try:
                await readable
            finally:
                loop.remove_reader(fd)
        data = os.read(fd, _CHUNK)
        if not data:
            break
        await stream.write(data)
    await stream.close()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _copy_stream_to_fd(stream: SpdyStream, fd: int) -> None:
    while data := await stream.read():
        view = memoryview(data)
        while view:
            written = await asyncio.to_thread(os.write, fd, view)
            view = view[written:]


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Any:
    saved = termios.tcgetattr(fd)
    ttymode.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _send_sizes(stream: SpdyStream, fd: int) -> None:
    """The terminal size now, and again on every SIGWINCH."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    changed.set()
    loop.add_signal_handler(signal.SIGWINCH, changed.set)
    try:
        while True:
            await changed.wait()
            changed.clear()
            with contextlib.suppress(OSError):
                columns, lines = os.get_terminal_size(fd)
                size = {"Width": columns, "Height": lines}
                await stream.write(json.dumps(size).encode() + b"\n")
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


async def remote_command(
    url: str,
    *,
    stdin: bool,
    tty: bool,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    stderr_fd: int = 2,
) -> int:
    """Run an exec or attach URL against this terminal; the remote exit code."""
    connection, protocol = await _upgrade(url, REMOTECOMMAND_PROTOCOLS)
    reading = asyncio.ensure_future(connection.serve())
    tasks: list[asyncio.Task[None]] = []
    raw = _raw_terminal(stdin_fd) if tty and os.isatty(stdin_fd) else contextlib.nullcontext()
    try:
        error = await connection.open_stream({"streamtype": "error"})
        streams = {"error": error}
        for kind, wanted in (("stdin", stdin), ("stdout", True), ("stderr", not tty)):
            if wanted:
                streams[kind] = await connection.open_stream({"streamtype": kind})
        if tty and protocol not in ("v2.channel.k8s.io", "channel.k8s.io"):
            streams["resize"] = await connection.open_stream({"streamtype": "resize"})
        error_text = asyncio.ensure_future(error.read_all())
        with raw:
            if "resize" in streams and os.isatty(stdin_fd):
                tasks.append(asyncio.ensure_future(_send_sizes(streams["resize"], stdin_fd)))
            if "stdin" in streams:
                tasks.append(asyncio.ensure_future(_copy_fd_to_stream(stdin_fd, streams["stdin"])))
            outputs = [_copy_stream_to_fd(streams["stdout"], stdout_fd)]
            if "stderr" in streams:
                outputs.append(_copy_stream_to_fd(streams["stderr"], stderr_fd))
            await asyncio.gather(*outputs)
            code, message = _exit_code(protocol, await error_text)
        if message:
            os.write(stderr_fd, f"error: {message}\n".encode())
        return code
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await connection.close()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


async def forward_ports(
    url: str,
    mappings: list[tuple[int, int]],
    *,
    address: str = "127.0.0.1",
    on_ready: Callable[[list[tuple[int, int]]], Awaitable[None] | None] | None = None,
) -> None:
    """Listen on ``address:<local>`` for each (local, remote) pair and forward each
    accepted connection over one SPDY connection, until that connection ends."""
    connection, _ = await _upgrade(url, PORTFORWARD_PROTOCOLS)
    reading = asyncio.ensure_future(connection.serve())
    request_ids = iter(range(1 << 62))
    servers = []

    def handler(remote: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            headers = {"port": str(remote), "requestid": str(next(request_ids))}
            try:
                error = await connection.open_stream({"streamtype": "error", **headers})
                await error.close()
                data = await connection.open_stream({"streamtype": "data", **headers})
            except (ConnectionError, TimeoutError) as exc:
                print(f"port-forward: cannot open streams: {exc}", file=sys.stderr)
                writer.close()
                return

            async def upstream() -> None:
                while chunk := await reader.read(_CHUNK):
                    await data.write(chunk)
                await data.close()

            async def downstream() -> None:
                while chunk := await data.read():
                    writer.write(chunk)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()

            async def report() -> None:
                if message := await error.read_all():
                    print(f"port-forward: {message.decode(errors='replace')}", file=sys.stderr)

            try:
                await asyncio.gather(upstream(), downstream(), report())
            except (ConnectionError, OSError):
                await data.cancel()
            finally:
                writer.close()

        return forward

    try:
        bound = []
        for local, remote in mappings:
            server = await asyncio.start_server(handler(remote), address, local)
            servers.append(server)
            bound.append((server.sockets[0].getsockname()[1], remote))
        if on_ready is not None:
            result = on_ready(bound)
            if result is not None:
                await result
        await connection.closed.wait()
    finally:
        for server in servers:
            server.close()
        await connection.close()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
