"""Registry failures on demand: a fault-injecting reverse proxy and a second blob host.

``FaultProxy`` forwards everything to an upstream (a ``Registry``'s URL) unchanged, the Host
header included, so the registry's upload Locations point back at the proxy. Each fault
matches requests by method and a regex searched in the path (query excluded), and fires
for the next ``times`` matching requests (``None``: every one); the first matching fault
with firings left wins. It runs on threads, so sync tests and asyncio tests (the agent's
aiohttp client) can use it alike.

``HeaderRecorder`` is "another host" (127.0.0.2) to redirect blob GETs to: it records the
headers it receives (a client must not send the registry's token there) and serves the
blob from the registry's storage directory, with Range support.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from tests.support._http import HOP_BY_HOP, BackgroundServer, QuietHandler
from tests.support.registry import Registry

CHUNK = 64 * 1024
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: Request headers the proxy sets itself (or that only concern the client's connection).
_NOT_FORWARDED = HOP_BY_HOP | {"content-length", "expect"}

FaultKind = Literal["status", "reset", "stall", "corrupt", "replace", "redirect"]


@dataclass
class Fault:
    """One programmed fault; returned by the ``FaultProxy`` methods that add it."""

    kind: FaultKind
    method: str | None  # None matches any method
    path: re.Pattern[str]
    times: int | None  # firings left; None: unlimited
    status: int = 503
    retry_after: str | None = None
    after_bytes: int | None = 0
    seconds: float | None = None
    offset: int = 0
    body: bytes = b""
    headers: Mapping[str, str | None] = field(default_factory=dict)
    location: str | Callable[[str], str] = ""
    fired: int = field(default=0, init=False)
    #: Set once the fault has fired (a stall or reset: once the body reached the point).
    hit: threading.Event = field(default_factory=threading.Event, init=False)
    _released: threading.Event = field(default_factory=threading.Event, init=False)

    def matches(self, method: str, path: str) -> bool:
        wanted = self.method is None or self.method == method
        return wanted and self.times != 0 and self.path.search(path) is not None

    def release(self) -> None:
        """End this fault's stall now, and skip the stalls it fires later."""
        self._released.set()

    def wait_hit(self, timeout: float = 10.0) -> bool:
        return self.hit.wait(timeout)


@dataclass
class ProxiedRequest:
    """One request the proxy saw; ``status`` is what the client got (None: reset mid-body)."""

    method: str
    path: str  # with the query
    range: str | None
    authorization: bool
    headers: dict[str, str]
    fault: FaultKind | None = None
    status: int | None = None


class _ProxyHandler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def _proxy(self) -> None:
        proxy: FaultProxy = self.server.owner  # type: ignore[attr-defined]
        body = self.read_body()
        record = ProxiedRequest(
            self.command,
            self.path,
            self.headers.get("Range"),
            "Authorization" in self.headers,
            dict(self.headers.items()),
        )
        fault = proxy.take_fault(self.command, urllib.parse.urlsplit(self.path).path, record)
        if fault is not None and fault.kind == "status":
            record.status = fault.status  # set before answering: the client may look at once
            self._answer_status(fault)
        elif fault is not None and fault.kind == "redirect":
            record.status = fault.status
            location = fault.location
            target = location(self.path) if callable(location) else location
            self.send_simple(fault.status, headers={"Location": target})
        else:
            self._forward(proxy, body, fault, record)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _proxy

    def _answer_status(self, fault: Fault) -> None:
        error = {"errors": [{"code": "UNAVAILABLE", "message": "fault injected by FaultProxy"}]}
        headers = {"Content-Type": "application/json"}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        self.send_simple(fault.status, json.dumps(error).encode(), headers)

    def _forward(
        self, proxy: FaultProxy, body: bytes, fault: Fault | None, record: ProxiedRequest
    ) -> None:
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _NOT_FORWARDED:
                    upstream.putheader(name, value)
            if body or self.command in ("POST", "PUT", "PATCH"):
                upstream.putheader("Content-Length", str(len(body)))
            try:
                upstream.endheaders(body or None)
                response = upstream.getresponse()
            except OSError as error:
                record.status = 502
                self.send_simple(502, f"upstream: {error}\n".encode())
                return
            self._relay(response, fault, record)
        finally:
            upstream.close()

    def _relay(
        self, response: http.client.HTTPResponse, fault: Fault | None, record: ProxiedRequest
    ) -> None:
        headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        length_header = response.getheader("Content-Length")
        replaced = fault is not None and fault.kind == "replace"
        if replaced:
            assert fault is not None
            chunks: list[bytes] | None = [fault.body]
            headers = _override(headers, fault.headers)
            length = len(fault.body)
        elif length_header is None and self.command != "HEAD":
            chunks = [response.read()]  # chunked upstream: buffer, answer with a length
            length = len(chunks[0])
        else:
            chunks = None
            length = int(length_header or 0)
        if fault is not None and fault.kind == "stall" and fault.after_bytes is None:
            self._stall(fault)
        self.send_response_only(response.status, response.reason)
        for name, value in headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        record.status = response.status
        self.end_headers()
        if self.command == "HEAD":
            return
        body = chunks if chunks is not None else iter(lambda: response.read(CHUNK), b"")
        if not self._stream(body, fault):
            record.status = None

    def _stream(self, chunks: Iterable[bytes], fault: Fault | None) -> bool:
        """Write the body, applying a body fault; False if the connection was reset."""
        cut = None
        if fault is not None and fault.kind in ("reset", "stall"):
            cut = fault.after_bytes
        sent = 0
        for chunk in chunks:
            if (
                fault is not None
                and fault.kind == "corrupt"
                and 0 <= fault.offset - sent < len(chunk)
            ):
                flipped = bytearray(chunk)
                flipped[fault.offset - sent] ^= 0xFF
                chunk = bytes(flipped)
            if cut is not None and sent + len(chunk) >= cut:
                self.wfile.write(chunk[: cut - sent])
                chunk = chunk[cut - sent :]
                if not self._body_fault(fault):
                    return False
                cut = None
            self.wfile.write(chunk)
            sent += len(chunk)
        return cut is None or self._body_fault(fault)  # a cut at or past the end

    def _body_fault(self, fault: Fault | None) -> bool:
        assert fault is not None
        if fault.kind == "reset":
            self.server.abort(self.connection)  # type: ignore[attr-defined]
            self.close_connection = True
            fault.hit.set()
            return False
        self._stall(fault)
        return True

    def _stall(self, fault: Fault) -> None:
        fault.hit.set()
        fault._released.wait(fault.seconds)


def _override(
    headers: list[tuple[str, str]], overrides: Mapping[str, str | None]
) -> list[tuple[str, str]]:
    lowered = {name.lower() for name in overrides}
    kept = [(k, v) for k, v in headers if k.lower() not in lowered]
    return kept + [(k, v) for k, v in overrides.items() if v is not None]


class FaultProxy(BackgroundServer):
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` ("http://host:port").

    ``host`` and ``url`` are the proxy's; point the client under test at them.
    """

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        super().__init__(_ProxyHandler, host)
        parts = urllib.parse.urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None, upstream
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._requests: list[ProxiedRequest] = []

    @property
    def requests(self) -> list[ProxiedRequest]:
        """Every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def clear(self) -> None:
        """Remove every fault (releasing stalls)."""
        with self._lock:
            faults, self._faults = self._faults, []
        for fault in faults:
            fault.release()

    def take_fault(self, method: str, path: str, record: ProxiedRequest) -> Fault | None:
        """Record the request and pick the fault it triggers, using up one firing."""
        with self._lock:
            self._requests.append(record)
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                    fault.fired += 1
                    record.fault = fault.kind
                    if fault.kind not in ("reset", "stall"):
                        fault.hit.set()
                    return fault
        return None

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail(
        self,
        method: str | None,
        path: str,
        status: int = 503,
        *,
        retry_after: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Answer ``status`` with a distribution error body (and ``Retry-After`` if given)."""
        return self._add(Fault("status", method, re.compile(path), times, status, retry_after))

    def reset(
        self, method: str | None, path: str, *, after_bytes: int = 0, times: int | None = 1
    ) -> Fault:
        """Send the headers and ``after_bytes`` of the body, then a TCP reset."""
        return self._add(Fault("reset", method, re.compile(path), times, after_bytes=after_bytes))

    def stall(
        self,
        method: str | None,
        path: str,
        *,
        after_bytes: int | None = 0,
        seconds: float | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Pause after ``after_bytes`` of the body (None: before the response headers) for
        ``seconds`` or until ``release()``/``clear()``/``stop()``, then go on."""
        return self._add(
            Fault(
                "stall",
                method,
                re.compile(path),
                times,
                after_bytes=after_bytes,
                seconds=seconds,
            )
        )

    def corrupt(
        self, method: str | None, path: str, *, offset: int = 0, times: int | None = 1
    ) -> Fault:
        """Flip every bit of the body byte at ``offset``; the length stays the same."""
        return self._add(Fault("corrupt", method, re.compile(path), times, offset=offset))

    def replace_body(
        self,
        method: str | None,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str | None] | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Serve ``body`` instead of upstream's, with its status and headers; ``headers``
        override them (a None value drops one, e.g. ``Docker-Content-Digest``)."""
        return self._add(
            Fault("replace", method, re.compile(path), times, body=body, headers=headers or {})
        )

    def redirect(
        self,
        method: str | None,
        path: str,
        location: str | Callable[[str], str],
        *,
        status: int = 307,
        times: int | None = 1,
    ) -> Fault:
        """Answer ``status`` with ``Location: location`` (a callable gets the request path
        with its query, e.g. ``lambda path: recorder.url + path``)."""
        return self._add(
            Fault("redirect", method, re.compile(path), times, status=status, location=location)
        )

    def before_stop(self) -> None:
        self.clear()


@dataclass(frozen=True)
class RecordedHeaders:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def authorization(self) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == "authorization"), None)


class _RecorderHandler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        recorder: HeaderRecorder = self.server.owner  # type: ignore[attr-defined]
        recorder.record(RecordedHeaders(self.command, self.path, dict(self.headers.items())))
        match = _DIGEST.search(self.path)
        try:
            if match is None:
                raise FileNotFoundError(self.path)
            with open(recorder.registry.blob_path(match.group()), "rb") as f:
                data = f.read()
        except OSError:
            self.send_simple(404, b"blob not found\n")
            return
        wanted = _parse_range(self.headers.get("Range"), len(data))
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if wanted is None:
            self.send_simple(200, data, headers)
            return
        start, end = wanted
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self.send_simple(206, data[start : end + 1], headers)

    do_GET = do_HEAD = _serve


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=a-b`` / ``bytes=a-`` range, else None."""
    found = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
    if found is None or int(found.group(1)) >= size:
        return None
    last = int(found.group(2)) if found.group(2) else size - 1
    return int(found.group(1)), min(last, size - 1)


class HeaderRecorder(BackgroundServer):
    """A blob host on 127.0.0.2 (another host than the registry's 127.0.0.1).

    Any path that contains a digest is answered with that blob from ``registry``'s storage,
    so a redirect keeps the path: ``proxy.redirect("GET", "/blobs/", lambda p: rec.url + p)``.
    """

    def __init__(self, registry: Registry, host: str = "127.0.0.2") -> None:
        super().__init__(_RecorderHandler, host)
        self.registry = registry
        self._lock = threading.Lock()
        self._requests: list[RecordedHeaders] = []

    @property
    def requests(self) -> list[RecordedHeaders]:
        with self._lock:
            return list(self._requests)

    def record(self, request: RecordedHeaders) -> None:
        with self._lock:
            self._requests.append(request)
