"""A threaded HTTP server that can always be stopped: the base of every server in here.

``ThreadingHTTPServer`` alone cannot be stopped while a handler blocks on a keep-alive
connection or a stalled response, and its handler threads outlive ``shutdown()``. This one
tracks its open connections, so ``stop()`` can shut them down and then join every thread;
a test that used it leaves no thread or socket behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import sys
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

#: Headers that describe one connection, not the message; a proxy never forwards them.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


#: How long an abort waits for the peer to take the bytes already written.
ABORT_DRAIN_TIMEOUT = 10.0


def _unacknowledged(connection: socket.socket) -> int:
    """Bytes written to ``connection`` that the peer has not acknowledged (Linux SIOCOUTQ)."""
    try:
        queued = fcntl.ioctl(connection.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    except OSError:
        return 0
    count: int = struct.unpack("i", queued)[0]
    return count


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output clean and reads request bodies."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> bytes:
        """The request body, sent with Content-Length or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send_simple(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        """A complete response with a Content-Length, so keep-alive clients stay in sync."""
        self.send_response_only(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins them
    block_on_close = True

    def __init__(self, host: str, handler: type[BaseHTTPRequestHandler], owner: Any) -> None:
        self.owner = owner
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._aborted: set[socket.socket] = set()
        super().__init__((host, 0), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def abort(self, connection: socket.socket) -> None:
        """Close ``connection`` with a TCP reset instead of a FIN when the handler ends.

        A reset drops whatever the kernel has not sent yet, so this first waits (a while)
        until the peer has acknowledged every byte written: the client gets all of them.
        """
        deadline = time.monotonic() + ABORT_DRAIN_TIMEOUT
        while _unacknowledged(connection) and time.monotonic() < deadline:
            time.sleep(0.002)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._lock:
            self._aborted.add(connection)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
            aborted = request in self._aborted
            self._aborted.discard(request)
        if aborted:
            self.close_request(request)  # no shutdown(SHUT_WR): that would send a FIN first
        else:
            super().shutdown_request(request)

    def disconnect_all(self) -> None:
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return  # a client that went away, or a connection stop() shut down
        super().handle_error(request, client_address)


class BackgroundServer:
    """Serves ``handler`` on ``host`` and a free port in a thread; a context manager.

    Handlers reach the owning object as ``self.server.owner``.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> None:
        self._server = _Server(host, handler, self)
        self._thread: threading.Thread | None = None
        port = self._server.server_address[1]
        self.host = f"{host}:{port}"
        self.url = f"http://{self.host}"

    def start(self) -> Self:
        name = f"{type(self).__name__}-{self.host}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # how long stop() may wait for the accept loop
            name=name,
        )
        self._thread.start()
        return self

    def abort_connection(self, connection: socket.socket) -> None:
        self._server.abort(connection)

    def before_stop(self) -> None:
        """Hook: wake up handlers that wait on something other than their socket."""

    def stop(self) -> None:
        """Stop accepting, end open connections, join every thread, close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self.before_stop()
        self._server.disconnect_all()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
