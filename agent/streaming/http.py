"""Just enough HTTP/1.1 for the streaming server: one request head, then an upgrade.

Every streaming request is a single ``GET``/``POST`` that either upgrades the
connection (SPDY/3.1 or WebSocket) or is answered with an error and closed,
so a full HTTP framework would add nothing: we read the request head (bounded
in size and time), answer with a plain response or ``101``, and hand the raw
``asyncio`` streams to the protocol. Bytes the client sent after the head stay
in the ``StreamReader`` buffer and are the first bytes the protocol reads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["BadRequest", "Request", "read_request", "write_response"]

MAX_HEAD = 16 * 1024
_REASONS = {
    101: "Switching Protocols",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BadRequest(Exception):
    """The request head is not HTTP/1.1 we can serve."""


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    #: lower-cased names; every value of a repeated header, in order
    headers: dict[str, list[str]] = field(default_factory=dict)

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    def header_tokens(self, name: str) -> list[str]:
        """Every comma-separated token of every value of a header, stripped, in order."""
        return [
            token.strip()
            for value in self.headers.get(name.lower(), [])
            for token in value.split(",")
            if token.strip()
        ]


async def read_request(reader: asyncio.StreamReader, timeout: float) -> Request:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
    except asyncio.IncompleteReadError:
        raise BadRequest("connection closed before the request head ended") from None
    if len(head) > MAX_HEAD:
        raise BadRequest("request head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    method, target, _ = parts
    url = urlsplit(target)
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line: {line[:80]!r}")
        headers.setdefault(name.lower(), []).append(value.strip())
    return Request(method, unquote(url.path), parse_qs(url.query), headers)


async def write_response(
    writer: asyncio.StreamWriter,
    status: int,
    headers: list[tuple[str, str]] | None = None,
    body: str = "",
) -> None:
    """A complete response; for anything but 101 the connection closes after it."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    payload = body.encode()
    all_headers = list(headers or [])
    if status != 101:
        all_headers += [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(payload))),
            ("Connection", "close"),
        ]
    lines += [f"{name}: {value}" for name, value in all_headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
    await writer.drain()
