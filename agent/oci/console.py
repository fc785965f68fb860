"""A client connection to conmon's attach socket and control FIFO.

conmon serves every process it monitors (a container, or one exec session)
on ``<socket-dir>/<uuid>/attach``, an ``AF_UNIX SOCK_SEQPACKET`` socket:

* from conmon, each packet is one pipe byte (2 = stdout, 3 = stderr) then up
  to 8192 bytes of output; conmon writes with blocking sockets, so a slow
  reader slows the process down and loses nothing;
* to conmon, each packet is raw stdin (conmon reads at most 32767 bytes of a
  packet, so we never send more); ``shutdown(SHUT_WR)`` means stdin EOF, and
  conmon closes the process's stdin unless it runs with ``--leave-stdin-open``;
* the control FIFO (``ctl`` in the bundle) takes text lines ``"<kind> <a> <b>"``:
  ``1 <height> <width>`` sets the terminal size, ``2 0 0`` reopens the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket

from agent.errors import FailedPrecondition

__all__ = ["STDERR", "STDOUT", "ConsoleConnection", "request_log_reopen", "resize_terminal"]

STDOUT = 2
STDERR = 3
#: conmon's STDIO_BUF_SIZE plus the pipe byte.
_PACKET = 8192 + 1
#: Output joined into one read, at most.
_BATCH = 256 * 1024
#: conmon reads CONN_SOCK_BUF_SIZE - 1 bytes of each packet; more would be cut off.
_MAX_INPUT_PACKET = 32767
#: conmon opens the ctl FIFO a moment after the process starts.
_CTL_WAIT = 2.0


class ConsoleConnection:
    """One attach-socket connection: ``read()`` output, ``write()`` stdin."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._pending = b""
        self._eof = False
        self.closed = False

    @classmethod
    async def connect(cls, path: str) -> ConsoleConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, path)
        except OSError as exc:
            sock.close()
            raise FailedPrecondition(f"cannot attach: {exc.strerror or exc}") from None
        return cls(sock)

    async def read(self) -> tuple[int, bytes] | None:
        """The next output as (pipe, data); None once conmon closed the connection.

        Packets already queued on the socket for the same pipe are joined (up
        to ``_BATCH`` bytes): one 8 KiB packet per await would cap a busy
        process's output at what the event loop can turn over.
        """
        packet = self._pending or await self._receive()
        self._pending = b""
        if packet is None:
            return None
        pipe, parts, size = packet[0], [packet[1:]], len(packet) - 1
        while size < _BATCH:
            try:
                more = self._sock.recv(_PACKET, socket.MSG_DONTWAIT)
            except OSError:
                break
            if not more:
                self._eof = True
                break
            if more[0] != pipe:
                self._pending = more  # the other pipe: the next read starts with it
                break
            parts.append(more[1:])
            size += len(more) - 1
        return pipe, b"".join(parts)

    async def _receive(self) -> bytes | None:
        while not self._eof:
            try:
                packet = await self._loop.sock_recv(self._sock, _PACKET)
            except OSError:
                return None
            if not packet:
                return None
            if len(packet) > 1:
                return packet
        return None

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), _MAX_INPUT_PACKET):
            await self._loop.sock_sendall(self._sock, view[start : start + _MAX_INPUT_PACKET])

    def close_stdin(self) -> None:
        """Tell conmon stdin ended (it closes the process's stdin)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._sock.close()


async def resize_terminal(control_fifo: str, width: int, height: int) -> None:
    """Ask conmon to set the terminal size (``TIOCSWINSZ`` on the pty master)."""
    if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
        return  # kubectl sends 0x0 before it knows the size; the kernel would keep it anyway
    deadline = asyncio.get_running_loop().time() + _CTL_WAIT
    while True:
        try:
            fd = os.open(control_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            break
        except OSError as exc:
            if exc.errno not in (errno.ENXIO, errno.ENOENT):
                raise
            if asyncio.get_running_loop().time() > deadline:
                return  # the process is gone; nothing to resize
            await asyncio.sleep(0.01)
    try:
        os.write(fd, f"1 {height} {width}\n".encode())
    except BlockingIOError:
        pass  # conmon's FIFO is full of older sizes; dropping one is harmless
    finally:
        os.close(fd)


def request_log_reopen(control_fifo: str) -> bool:
    """Ask conmon to reopen its log file; False when no conmon reads the FIFO."""
    try:
        fd = os.open(control_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return False
        raise
    try:
        os.write(fd, b"2 0 0\n")
    finally:
        os.close(fd)
    return True
