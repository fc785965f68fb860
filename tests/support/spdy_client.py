"""An independent asyncio SPDY/3.1 client, to test the agent's CRI streaming server with.

It is written from the protocol notes (protocols.md §3.3-3.4) and the upstream Go sources they
cite (moby/spdystream ``spdy/*.go``, apimachinery ``pkg/util/httpstream/spdy``), and shares no
code with ``agent/streaming``: a misreading of the protocol there cannot cancel out here.

It behaves like client-go over spdystream: odd stream ids from 1, one zlib stream per direction
primed with the SPDY/3 dictionary and SYNC_FLUSHed after each header block, a SYN_REPLY awaited
for each stream before the next is opened, and PINGs of the server's parity echoed. Where a Go
client would silently drop a server's slip (DATA before SYN_REPLY, frames for streams it never
opened), this one drops it too but records it in ``SpdyClientConnection.violations``, so a test
can assert there were none.

The frame builders are plain functions, so tests can craft malformed frames and push them with
``SpdyClientConnection.send_raw``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import struct
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

VERSION = 3

# The SPDY/3 header dictionary (moby/spdystream spdy/dictionary.go, from the SPDY draft 3): 65
# length-prefixed header names and values, then a run of common value fragments. Built from its
# parts to stay readable; the checksum below pins every byte.
_DICTIONARY_ENTRIES = (
    b"options", b"head", b"post", b"put", b"delete", b"trace", b"accept", b"accept-charset",
    b"accept-encoding", b"accept-language", b"accept-ranges", b"age", b"allow", b"authorization",
    b"cache-control", b"connection", b"content-base", b"content-encoding", b"content-language",
    b"content-length", b"content-location", b"content-md5", b"content-range", b"content-type",
    b"date", b"etag", b"expect", b"expires", b"from", b"host", b"if-match", b"if-modified-since",
    b"if-none-match", b"if-range", b"if-unmodified-since", b"last-modified", b"location",
    b"max-forwards", b"pragma", b"proxy-authenticate", b"proxy-authorization", b"range",
    b"referer", b"retry-after", b"server", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"user-agent", b"vary", b"via", b"warning", b"www-authenticate", b"method", b"get", b"status",
    b"200 OK", b"version", b"HTTP/1.1", b"url", b"public", b"set-cookie", b"keep-alive",
    b"origin",
)  # fmt: skip
_DICTIONARY_TAIL = (
    b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    b"203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    b"401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    b"503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    b"Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    b"application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    b"gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = (
    b"".join(struct.pack(">I", len(entry)) + entry for entry in _DICTIONARY_ENTRIES)
    + _DICTIONARY_TAIL
)
#: sha256 of the Go byte array ``headerDictionary`` (1423 bytes).
DICTIONARY_SHA256 = "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
if hashlib.sha256(DICTIONARY).hexdigest() != DICTIONARY_SHA256:  # pragma: no cover
    raise RuntimeError("the SPDY/3 header dictionary does not match its checksum")

# Control frame types (spdy/types.go; there is no type 5).
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9
#: ``Frame.type`` of a DATA frame, which has no type field on the wire.
DATA = 0

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_CLEAR_SETTINGS = 0x01

#: The largest DATA payload the 24-bit length field can carry.
MAX_DATA_LENGTH = (1 << 24) - 1

#: How long client-go waits for each SYN_REPLY (apimachinery spdy/connection.go).
REPLY_TIMEOUT = 30.0


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


# --------------------------------------------------------------------------------------------
# Errors


class SpdyError(Exception):
    """Anything this client refuses: a failed upgrade, a refused stream, a broken frame."""


class UpgradeError(SpdyError):
    """The server answered the upgrade request with something other than 101."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes):
        super().__init__(f"upgrade refused: HTTP {status} {reason}: {body[:300]!r}")
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header_values(self, name: str) -> list[str]:
        """Every value of response header ``name`` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


class StreamRefused(SpdyError):
    """The server answered a SYN_STREAM with RST_STREAM instead of SYN_REPLY."""

    def __init__(self, stream_id: int, status: int):
        super().__init__(f"stream {stream_id} refused with RST_STREAM status {status}")
        self.stream_id = stream_id
        self.status = status


class ReplyTimeout(SpdyError, TimeoutError):
    """No SYN_REPLY (nor RST_STREAM) came within the timeout."""


class ConnectionGone(SpdyError):
    """The connection was closed, or the server sent GOAWAY, before the operation finished."""


class FrameError(SpdyError):
    """A frame or header block from the server could not be decoded."""


# --------------------------------------------------------------------------------------------
# Frame builders: plain functions so tests can also build frames that are wrong on purpose.


def control_frame(
    frame_type: int,
    payload: bytes,
    flags: int = 0,
    *,
    version: int = VERSION,
    length: int | None = None,
) -> bytes:
    """A control frame; ``length`` (default: the payload's) lets a test lie in the header."""
    size = len(payload) if length is None else length
    head = struct.pack(
        ">HHI", 0x8000 | (version & 0x7FFF), frame_type, (flags & 0xFF) << 24 | size & 0xFFFFFF
    )
    return head + payload


def data_frame(
    stream_id: int, data: bytes = b"", flags: int = 0, *, length: int | None = None
) -> bytes:
    """A DATA frame; spdystream sends one per ``Write()``, so this client does the same."""
    size = len(data) if length is None else length
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags & 0xFF) << 24 | size & 0xFFFFFF) + data


def syn_stream(
    stream_id: int,
    header_block: bytes,
    flags: int = 0,
    *,
    associated_to: int = 0,
    priority: int = 0,
    slot: int = 0,
) -> bytes:
    """SYN_STREAM around an already compressed header block (see ``HeaderCompressor``)."""
    body = struct.pack(
        ">IIBB", stream_id & 0x7FFFFFFF, associated_to & 0x7FFFFFFF, (priority & 0x07) << 5, slot
    )
    return control_frame(SYN_STREAM, body + header_block, flags)


def syn_reply(stream_id: int, header_block: bytes, flags: int = 0) -> bytes:
    return control_frame(SYN_REPLY, struct.pack(">I", stream_id & 0x7FFFFFFF) + header_block, flags)


def rst_stream(stream_id: int, status: int = RstStatus.CANCEL) -> bytes:
    return control_frame(RST_STREAM, struct.pack(">II", stream_id & 0x7FFFFFFF, status))


def settings_frame(entries: Mapping[int, int], flags: int = 0, *, entry_flags: int = 0) -> bytes:
    """SETTINGS: ``entries`` maps setting id (24 bits) to value."""
    body = struct.pack(">I", len(entries)) + b"".join(
        struct.pack(">II", (entry_flags & 0xFF) << 24 | key & 0xFFFFFF, value)
        for key, value in entries.items()
    )
    return control_frame(SETTINGS, body, flags)


def ping_frame(ping_id: int) -> bytes:
    return control_frame(PING, struct.pack(">I", ping_id))


def goaway_frame(last_good_stream_id: int, status: int = GoAwayStatus.OK) -> bytes:
    return control_frame(GOAWAY, struct.pack(">II", last_good_stream_id & 0x7FFFFFFF, status))


def headers_frame(stream_id: int, header_block: bytes, flags: int = 0) -> bytes:
    return control_frame(HEADERS, struct.pack(">I", stream_id & 0x7FFFFFFF) + header_block, flags)


def window_update_frame(stream_id: int, delta: int) -> bytes:
    return control_frame(WINDOW_UPDATE, struct.pack(">II", stream_id & 0x7FFFFFFF, delta))


# --------------------------------------------------------------------------------------------
# Header blocks

HeaderValues = str | Sequence[str]


def encode_header_block(headers: Mapping[str, HeaderValues]) -> bytes:
    """The uncompressed SPDY/3 block: 32-bit counts and lengths, names lower-cased, values of
    one name joined with NUL (spdy/write.go ``writeHeaderValueBlock``)."""
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        value = values if isinstance(values, str) else "\x00".join(values)
        name_bytes, value_bytes = name.lower().encode(), value.encode()
        out += [struct.pack(">I", len(name_bytes)), name_bytes]
        out += [struct.pack(">I", len(value_bytes)), value_bytes]
    return b"".join(out)


def decode_header_block(raw: bytes, *, problems: list[str] | None = None) -> dict[str, list[str]]:
    """Names (lower-cased, as Go compares them) to their NUL-separated values; strict about
    truncation and trailing bytes, because either means the zlib streams are out of step.

    Upper-case or repeated names decode, but are reported to ``problems``: spdystream's
    ``parseHeaderValueBlock`` fails the whole frame on either, which kills a Go connection.
    """
    headers: dict[str, list[str]] = {}
    try:
        (count,) = struct.unpack_from(">I", raw, 0)
        offset = 4
        for _ in range(count):
            (size,) = struct.unpack_from(">I", raw, offset)
            name = raw[offset + 4 : offset + 4 + size].decode("utf-8", "surrogateescape")
            offset += 4 + size
            (size,) = struct.unpack_from(">I", raw, offset)
            value = raw[offset + 4 : offset + 4 + size].decode("utf-8", "surrogateescape")
            offset += 4 + size
            if offset > len(raw):
                raise FrameError(f"header block truncated: {raw!r}")
            if problems is not None and name != name.lower():
                problems.append(f"header name {name!r} is not lower-case")
            if problems is not None and name.lower() in headers:
                problems.append(f"header {name.lower()!r} appears twice in one block")
            headers.setdefault(name.lower(), []).extend(value.split("\x00"))
    except struct.error as err:
        raise FrameError(f"header block truncated: {raw!r}") from err
    if offset != len(raw):
        raise FrameError(f"{len(raw) - offset} bytes after the header block: {raw!r}")
    return headers


class HeaderCompressor:
    """One direction's zlib stream: shared by every header block of a connection, each block
    ending in a SYNC_FLUSH so the peer can decode it without waiting for more."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(
            9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, zdict=DICTIONARY
        )

    def compress(self, raw: bytes) -> bytes:
        return self._zlib.compress(raw) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The other direction's zlib stream; it persists for the whole connection."""

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(zdict=DICTIONARY)

    def decompress(self, block: bytes) -> bytes:
        try:
            return self._zlib.decompress(block)
        except zlib.error as err:
            raise FrameError(f"header block does not decompress: {err}") from err


# --------------------------------------------------------------------------------------------
# Frame parsing

#: Control frames whose payload starts with a stream id.
_STREAM_CONTROL = frozenset({SYN_STREAM, SYN_REPLY, RST_STREAM, HEADERS, WINDOW_UPDATE})


@dataclass(frozen=True)
class Frame:
    """One frame as read off the wire; ``type`` is ``DATA`` (0) for data frames and
    ``stream_id`` is 0 for control frames that name no stream."""

    control: bool
    type: int
    flags: int
    stream_id: int
    payload: bytes
    version: int = VERSION

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


def _frame(head: bytes, payload: bytes) -> Frame:
    first, _ = struct.unpack(">II", head)
    flags = head[4]
    if not first & 0x80000000:
        return Frame(False, DATA, flags, first & 0x7FFFFFFF, payload)
    frame_type, version = first & 0xFFFF, (first >> 16) & 0x7FFF
    stream_id = 0
    if frame_type in _STREAM_CONTROL and len(payload) >= 4:
        stream_id = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
    return Frame(True, frame_type, flags, stream_id, payload, version)


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame; ``asyncio.IncompleteReadError`` at EOF (``partial`` empty: clean EOF)."""
    head = await reader.readexactly(8)
    return _frame(head, await reader.readexactly(int.from_bytes(head[5:8], "big")))


def split_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """Every whole frame in ``data``, and the bytes left over; for captured byte streams."""
    frames, offset = [], 0
    while len(data) - offset >= 8:
        end = offset + 8 + int.from_bytes(data[offset + 5 : offset + 8], "big")
        if end > len(data):
            break
        frames.append(_frame(data[offset : offset + 8], data[offset + 8 : end]))
        offset = end
    return frames, data[offset:]


# --------------------------------------------------------------------------------------------
# HTTP/1.1 upgrade


@dataclass
class UpgradeResponse:
    """A 101 answer; the reader still holds any bytes the server sent after the head, which
    already belong to the upgraded protocol."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, list[tuple[str, str]]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise SpdyError(f"not an HTTP response: {status_line!r}")
    headers = []
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    fields = {name.lower(): value for name, value in headers}
    if "content-length" in fields:
        return await reader.readexactly(int(fields["content-length"]))
    if fields.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return body
    return await reader.read()


async def http_upgrade(
    url: str,
    method: str,
    headers: Sequence[tuple[str, str]],
    *,
    timeout: float = 30.0,
) -> UpgradeResponse:
    """Send one HTTP/1.1 request on a fresh TCP connection to ``url`` (``http://`` only) and
    return the 101 answer; any other status raises ``UpgradeError`` with the body."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only absolute http:// URLs are supported: {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, parts.port or 80), timeout
    )
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        async with asyncio.timeout(timeout):
            status, reason, response_headers = await _read_head(reader)
            if status != 101:
                body = await _read_body(reader, response_headers)
                raise UpgradeError(status, reason, response_headers, body)
    except BaseException:
        writer.close()
        raise
    return UpgradeResponse(status, reason, response_headers, reader, writer)


# --------------------------------------------------------------------------------------------
# Connection and streams


class ClientStream:
    """One client-initiated stream. Reading ends (returns ``b""``) at the server's FIN, at
    RST_STREAM (as spdystream does, keeping what arrived before it: see ``reset_status``), at
    GOAWAY and when the connection ends (see ``end_reason``)."""

    def __init__(
        self, connection: SpdyClientConnection, stream_id: int, headers: Mapping[str, HeaderValues]
    ):
        self.connection = connection
        self.id = stream_id
        self.headers = dict(headers)
        #: The SYN_REPLY's headers, once it came.
        self.reply_headers: dict[str, list[str]] | None = None
        #: Headers from HEADERS frames, merged.
        self.extra_headers: dict[str, list[str]] = {}
        #: The status of the server's RST_STREAM, if it sent one.
        self.reset_status: int | None = None
        #: Why reading ended: "fin", "reset", "goaway", "connection closed", "reset locally".
        self.end_reason: str | None = None
        self.local_closed = False
        self.local_reset = False
        self._reply = asyncio.get_running_loop().create_future()
        self._refusal: SpdyError | None = None
        self._buffer = bytearray()
        self._readable = asyncio.Event()

    def __repr__(self) -> str:
        return f"<ClientStream {self.id} {self.headers} end={self.end_reason}>"

    @property
    def replied(self) -> bool:
        return self.reply_headers is not None

    @property
    def remote_closed(self) -> bool:
        return self.end_reason is not None

    async def wait_reply(self, timeout: float = REPLY_TIMEOUT) -> dict[str, list[str]]:
        """The SYN_REPLY's headers; ``StreamRefused`` on RST_STREAM, ``ConnectionGone`` on GOAWAY
        or EOF, ``ReplyTimeout`` when neither came in time."""
        try:
            await asyncio.wait_for(asyncio.shield(self._reply), timeout)
        except TimeoutError:
            raise ReplyTimeout(f"no SYN_REPLY for stream {self.id} within {timeout}s") from None
        if self._refusal is not None:
            raise self._refusal
        assert self.reply_headers is not None
        return self.reply_headers

    async def write(self, data: bytes) -> None:
        """Send ``data`` as DATA frames (one per 16 MiB - 1); a no-op for empty data."""
        if self.local_closed or self.local_reset:
            raise SpdyError(f"stream {self.id} is closed for writing")
        for offset in range(0, len(data), MAX_DATA_LENGTH):
            await self.connection.send_raw(
                data_frame(self.id, data[offset : offset + MAX_DATA_LENGTH])
            )

    async def close(self) -> None:
        """Half-close: an empty DATA frame with FIN, as spdystream's ``Stream.Close()``."""
        if self.local_closed or self.local_reset:
            return
        self.local_closed = True
        await self.connection.send_raw(data_frame(self.id, b"", FLAG_FIN))

    async def reset(self, status: int = RstStatus.CANCEL) -> None:
        """RST_STREAM (CANCEL by default, as spdystream's ``Reset()``); reading ends at once."""
        if self.local_reset:
            return
        self.local_reset = True
        self._end("reset locally")
        with contextlib.suppress(ConnectionError, ConnectionGone):
            await self.connection.send_raw(rst_stream(self.id, status))

    async def read(self, max_bytes: int = -1) -> bytes:
        """Up to ``max_bytes`` (all buffered if negative) once any arrived; ``b""`` at the end."""
        while not self._buffer and self.end_reason is None:
            self._readable.clear()
            await self._readable.wait()
        size = len(self._buffer) if max_bytes < 0 else min(max_bytes, len(self._buffer))
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        return chunk

    async def read_exactly(self, size: int) -> bytes:
        """Exactly ``size`` bytes; ``asyncio.IncompleteReadError`` if the stream ends first."""
        data = b""
        while len(data) < size:
            chunk = await self.read(size - len(data))
            if not chunk:
                raise asyncio.IncompleteReadError(data, size)
            data += chunk
        return data

    async def read_all(self, timeout: float | None = None) -> bytes:
        """Everything until the stream ends (FIN, reset, GOAWAY or EOF)."""
        async with asyncio.timeout(timeout):
            chunks = []
            while chunk := await self.read():
                chunks.append(chunk)
            return b"".join(chunks)

    # Called by the connection's read loop.

    def _on_reply(self, headers: dict[str, list[str]]) -> None:
        self.reply_headers = headers
        if not self._reply.done():
            self._reply.set_result(None)

    def _on_data(self, data: bytes) -> None:
        self._buffer += data
        self._readable.set()

    def _end(self, reason: str, refusal: SpdyError | None = None) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self._readable.set()
        if not self._reply.done():
            self._refusal = refusal or ConnectionGone(
                f"stream {self.id} ended ({reason}) unreplied"
            )
            self._reply.set_result(None)


class SpdyClientConnection:
    """A SPDY/3.1 session on an upgraded TCP connection; see ``connect``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        protocol: str = "",
        response_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        #: The negotiated ``X-Stream-Protocol-Version`` ("" if the server sent none).
        self.protocol = protocol
        self.response_headers = list(response_headers)
        #: Server slips this client tolerated (as a Go client would), for tests to assert on.
        self.violations: list[str] = []
        #: (last good stream id, status) of the server's GOAWAY, once it came.
        self.goaway: tuple[int, int] | None = None
        #: Ids of the server's own PINGs, each of which was echoed.
        self.server_pings: list[int] = []
        #: Frames received, by type (``DATA`` = 0).
        self.received: Counter[int] = Counter()
        #: Why the read loop stopped, when it was not a clean EOF or a local close.
        self.error: BaseException | None = None
        self.streams: dict[int, ClientStream] = {}
        self._reader = reader
        self._writer = writer
        self._compressor = HeaderCompressor()
        self._decompressor = HeaderDecompressor()
        self._next_stream_id = 1
        self._next_ping_id = 1
        self._pings: dict[int, asyncio.Future[bool]] = {}
        self._drain_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

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
        """True once the read side ended (server EOF, a decoding error, or ``close()``)."""
        return self._closed.is_set()

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the server closes the connection (or ``close()`` was called)."""
        async with asyncio.timeout(timeout):
            await self._closed.wait()

    # Sending

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are: frames from the builders, or garbage."""
        if self._writer.is_closing():
            raise ConnectionGone("the connection is closed")
        self._writer.write(data)
        async with self._drain_lock:
            await self._writer.drain()

    def compress_headers(self, headers: Mapping[str, HeaderValues]) -> bytes:
        """A header block through this connection's zlib stream, for a hand-made SYN_STREAM or
        HEADERS frame; send that frame before any other header block, or the server's
        decompressor and ours fall out of step."""
        return self._compressor.compress(encode_header_block(headers))

    def reserve_stream_id(self) -> int:
        """The next client stream id, consumed (for hand-made SYN_STREAM frames)."""
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        return stream_id

    async def open_stream(
        self,
        headers: Mapping[str, HeaderValues],
        fin: bool = False,
        *,
        unidirectional: bool = False,
        wait_reply: bool = True,
        timeout: float = REPLY_TIMEOUT,
    ) -> ClientStream:
        """SYN_STREAM with the next odd id and, unless ``wait_reply`` is off, wait for its
        SYN_REPLY the way client-go's ``CreateStream`` does (``StreamRefused`` on RST_STREAM)."""
        if self.goaway is not None or self.closed:
            raise ConnectionGone("no new streams after GOAWAY or close")
        stream = ClientStream(self, self.reserve_stream_id(), headers)
        self.streams[stream.id] = stream
        flags = (FLAG_FIN if fin else 0) | (FLAG_UNIDIRECTIONAL if unidirectional else 0)
        stream.local_closed = fin
        # Compress and write with no await between: the zlib stream and the wire keep one order
        # even when several tasks open streams at once.
        await self.send_raw(syn_stream(stream.id, self.compress_headers(headers), flags))
        if wait_reply:
            await stream.wait_reply(timeout)
        return stream

    async def ping(self, timeout: float = 10.0) -> float:
        """Send a PING (odd id, the client's parity) and return the seconds until its echo."""
        ping_id = self._next_ping_id
        self._next_ping_id += 2
        echoed = asyncio.get_running_loop().create_future()
        self._pings[ping_id] = echoed
        start = time.monotonic()
        try:
            await self.send_raw(ping_frame(ping_id))
            if not await asyncio.wait_for(asyncio.shield(echoed), timeout):
                raise ConnectionGone(f"the connection ended before PING {ping_id} came back")
        finally:
            self._pings.pop(ping_id, None)
        return time.monotonic() - start

    def abort(self) -> None:
        """Drop the TCP connection at once, unsent data and all, as a killed client does."""
        self._writer.transport.abort()
        self._read_task.cancel()
        self._shut("connection aborted")

    async def close(self, *, goaway: bool = True) -> None:
        """GOAWAY (as spdystream's ``Close()``), then close the socket; idempotent."""
        if goaway and not self._writer.is_closing():
            with contextlib.suppress(ConnectionError, ConnectionGone):
                await self.send_raw(goaway_frame(0, GoAwayStatus.OK))
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._read_task
        self._shut("connection closed")

    # Receiving

    def _violation(self, message: str) -> None:
        self.violations.append(message)

    def _shut(self, reason: str) -> None:
        self._closed.set()
        for stream in self.streams.values():
            stream._end(reason)
        for echoed in self._pings.values():
            if not echoed.done():
                echoed.set_result(False)

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    frame = await read_frame(self._reader)
                except asyncio.IncompleteReadError as err:
                    if err.partial:
                        self._violation(f"connection ended inside a frame: {err.partial!r}")
                    return
                self.received[frame.type] += 1
                if frame.control:
                    await self._on_control(frame)
                else:
                    self._on_data(frame)
        except (ConnectionError, FrameError) as err:
            self.error = err
            if isinstance(err, FrameError):
                self._violation(str(err))
        finally:
            self._shut("connection closed")

    def _headers(self, block: bytes) -> dict[str, list[str]]:
        raw = self._decompressor.decompress(block)
        return decode_header_block(raw, problems=self.violations)

    def _on_data(self, frame: Frame) -> None:
        stream = self.streams.get(frame.stream_id)
        if stream is None:
            self._violation(f"DATA for stream {frame.stream_id}, which was never opened")
            return
        if stream.local_reset or stream.end_reason in ("goaway", "connection closed"):
            return  # it is gone on our side; spdystream drops these too
        if not stream.replied:
            self._violation(f"DATA on stream {stream.id} before its SYN_REPLY (dropped)")
            return
        if stream.end_reason is not None:
            self._violation(f"DATA on stream {stream.id} after it ended ({stream.end_reason})")
            return
        if frame.payload:
            stream._on_data(frame.payload)
        if frame.fin:
            stream._end("fin")

    async def _on_control(self, frame: Frame) -> None:
        try:
            await self._dispatch_control(frame)
        except struct.error as err:
            raise FrameError(f"malformed control frame type {frame.type}: {frame!r}") from err

    async def _dispatch_control(self, frame: Frame) -> None:
        if frame.version != VERSION:
            self._violation(f"control frame type {frame.type} with version {frame.version}")
        payload = frame.payload
        if frame.type == SYN_REPLY:
            headers = self._headers(payload[4:])  # always decode: the zlib stream must advance
            stream = self.streams.get(frame.stream_id)
            if stream is None:
                self._violation(f"SYN_REPLY for stream {frame.stream_id}, which was never opened")
            elif stream.replied:
                self._violation(f"second SYN_REPLY for stream {stream.id}")
            else:
                stream._on_reply(headers)
                if frame.fin:
                    stream._end("fin")
        elif frame.type == SYN_STREAM:
            self._headers(payload[10:])
            self._violation(f"the server opened stream {frame.stream_id}; refused")
            await self.send_raw(rst_stream(frame.stream_id, RstStatus.REFUSED_STREAM))
        elif frame.type == HEADERS:
            headers = self._headers(payload[4:])
            if stream := self.streams.get(frame.stream_id):
                for name, values in headers.items():
                    stream.extra_headers.setdefault(name, []).extend(values)
        elif frame.type == RST_STREAM:
            (status,) = struct.unpack_from(">I", payload, 4)
            if stream := self.streams.get(frame.stream_id):
                stream.reset_status = status
                stream._end("reset", StreamRefused(stream.id, status))
        elif frame.type == PING:
            (ping_id,) = struct.unpack(">I", payload)
            if ping_id % 2 == 0:  # the server's parity: echo it unchanged
                self.server_pings.append(ping_id)
                await self.send_raw(frame_bytes(frame))
            elif (echoed := self._pings.get(ping_id)) and not echoed.done():
                echoed.set_result(True)
        elif frame.type == GOAWAY:
            last_good, status = struct.unpack(">II", payload)
            self.goaway = (last_good & 0x7FFFFFFF, status)
            for stream in self.streams.values():
                stream._end("goaway")
        elif frame.type not in (SETTINGS, WINDOW_UPDATE):  # both ignored, as spdystream does
            self._violation(f"unknown control frame type {frame.type}")


def frame_bytes(frame: Frame) -> bytes:
    """A parsed frame back on the wire, unchanged."""
    if frame.control:
        return control_frame(frame.type, frame.payload, frame.flags, version=frame.version)
    return data_frame(frame.stream_id, frame.payload, frame.flags)


async def connect(
    url: str,
    protocols: Sequence[str],
    method: str = "POST",
    *,
    headers: Sequence[tuple[str, str]] = (),
    upgrade: str = "SPDY/3.1",
    timeout: float = 30.0,
) -> SpdyClientConnection:
    """Upgrade a fresh TCP connection to ``url`` to SPDY/3.1, offering ``protocols`` in order
    (one ``X-Stream-Protocol-Version`` line each), and start the session.

    A non-101 answer raises ``UpgradeError`` (404 for an unknown token, 400, 403 with
    ``X-Accepted-Stream-Protocol-Versions``...). Like apimachinery's ``SpdyRoundTripper``, a 101
    must carry ``Connection: Upgrade`` and ``Upgrade: SPDY/3.1``; the negotiated protocol must be
    one that was offered ("" if the server names none, which client-go reads as v1).
    """
    request_headers = [("Connection", "Upgrade"), ("Upgrade", upgrade)]
    request_headers += [("X-Stream-Protocol-Version", protocol) for protocol in protocols]
    request_headers += headers
    response = await http_upgrade(url, method, request_headers, timeout=timeout)
    try:
        connection_header = ",".join(response.get_all("Connection")).lower()
        upgrade_header = ",".join(response.get_all("Upgrade")).lower()
        if "upgrade" not in connection_header or "spdy/3.1" not in upgrade_header:
            raise SpdyError(
                f"101 without Connection: Upgrade and Upgrade: SPDY/3.1: {response.headers}"
            )
        protocol = response.get("X-Stream-Protocol-Version") or ""
        if protocol and protocol not in protocols:
            raise SpdyError(f"the server chose {protocol!r}, which was not offered: {protocols}")
    except BaseException:
        response.writer.close()
        raise
    return SpdyClientConnection(
        response.reader, response.writer, protocol=protocol, response_headers=response.headers
    )
