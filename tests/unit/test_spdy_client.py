"""The streaming test clients (tests/support) checked on their own, with no agent involved.

Encoders are checked against a tiny parser written here from the spec, not against the
client's own decoder; the loopback tests run the clients against minimal fake peers, also
defined here, that do just enough of SPDY/3.1 or RFC 6455 to exercise the client's handling
of SYN_REPLY, FIN, RST_STREAM, PING, GOAWAY and WebSocket fragments, pings and close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support import spdy_client as spdy
from tests.support.portforward_client import forward_spdy
from tests.support.remotecommand_client import (
    OP_BINARY,
    OP_TEXT,
    StatusParseError,
    channel_frames,
    decode_channel,
    encode_channel,
    exec_spdy,
    exec_websocket,
    exit_code,
    join_channels,
    mask,
    parse_status,
    protocol_version,
    resize_message,
    with_query,
    ws_accept,
    ws_frame,
)

DICT = spdy.DICTIONARY

# --------------------------------------------------------------------------------------------
# A tiny independent parser


def parse_frame(data: bytes) -> tuple[dict[str, Any], bytes]:
    """One SPDY/3 frame off the front of ``data``, and the rest."""
    word, flags_length = struct.unpack(">II", data[:8])
    length = flags_length & 0xFFFFFF
    payload, rest = data[8 : 8 + length], data[8 + length :]
    assert len(payload) == length
    frame: dict[str, Any] = {"flags": flags_length >> 24, "payload": payload}
    if word & 0x80000000:
        frame.update(control=True, version=(word >> 16) & 0x7FFF, type=word & 0xFFFF)
    else:
        frame.update(control=False, stream_id=word)
    return frame, rest


def parse_block(raw: bytes) -> dict[str, str]:
    """An uncompressed SPDY/3 header block (32-bit lengths)."""
    (count,) = struct.unpack_from(">I", raw)
    offset, headers = 4, {}
    for _ in range(count):
        (size,) = struct.unpack_from(">I", raw, offset)
        name = raw[offset + 4 : offset + 4 + size].decode()
        offset += 4 + size
        (size,) = struct.unpack_from(">I", raw, offset)
        headers[name] = raw[offset + 4 : offset + 4 + size].decode()
        offset += 4 + size
    assert offset == len(raw)
    return headers


# --------------------------------------------------------------------------------------------
# Dictionary and frames


def test_dictionary_is_spdystreams_byte_for_byte() -> None:
    assert len(DICT) == 1423
    assert hashlib.sha256(DICT).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    )
    assert DICT.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICT.endswith(b"charset=utf-8charset=iso-8859-1,utf-,*,enq=0.")


def test_data_frame_bytes() -> None:
    assert spdy.data_frame(1, b"hi", spdy.FLAG_FIN) == bytes.fromhex("00000001 01000002 6869")
    big = bytes(range(256)) * 300
    frame, rest = parse_frame(spdy.data_frame(0x7FFFFFFF, big))
    assert rest == b""
    assert frame == {"control": False, "stream_id": 0x7FFFFFFF, "flags": 0, "payload": big}


@pytest.mark.parametrize(
    ("raw", "kind", "flags", "payload"),
    [
        (
            spdy.syn_stream(3, b"BLOCK", spdy.FLAG_FIN, priority=2),
            1,
            1,
            struct.pack(">IIBB", 3, 0, 2 << 5, 0) + b"BLOCK",
        ),
        (spdy.syn_reply(3, b"B"), 2, 0, struct.pack(">I", 3) + b"B"),
        (spdy.rst_stream(5, 3), 3, 0, struct.pack(">II", 5, 3)),
        (spdy.settings_frame({4: 100, 7: 65536}), 4, 0, struct.pack(">5I", 2, 4, 100, 7, 65536)),
        (spdy.ping_frame(2), 6, 0, struct.pack(">I", 2)),
        (spdy.goaway_frame(7, 2), 7, 0, struct.pack(">II", 7, 2)),
        (spdy.headers_frame(1, b"B", spdy.FLAG_FIN), 8, 1, struct.pack(">I", 1) + b"B"),
        (spdy.window_update_frame(1, 1000), 9, 0, struct.pack(">II", 1, 1000)),
    ],
)
def test_control_frame_layouts(raw: bytes, kind: int, flags: int, payload: bytes) -> None:
    assert raw[:2] == b"\x80\x03"  # C bit and version 3, as spdystream writes 0x8000|3
    frame, rest = parse_frame(raw)
    assert rest == b""
    assert frame == {
        "control": True,
        "version": 3,
        "type": kind,
        "flags": flags,
        "payload": payload,
    }


def test_builders_can_lie_for_malformed_frames() -> None:
    raw = spdy.control_frame(spdy.PING, b"\x00\x00\x00\x01", version=2, length=100)
    assert raw[:8] == bytes.fromhex("80020006 00000064")


def test_split_frames_keeps_the_partial_tail() -> None:
    stream = spdy.ping_frame(1) + spdy.data_frame(1, b"abc", spdy.FLAG_FIN) + spdy.rst_stream(1)
    frames, rest = spdy.split_frames(stream[:-3])
    assert [(f.control, f.type, f.stream_id, f.fin) for f in frames] == [
        (True, spdy.PING, 0, False),
        (False, spdy.DATA, 1, True),
    ]
    assert rest == spdy.rst_stream(1)[:-3]


def test_header_blocks_share_one_zlib_stream_with_the_dictionary() -> None:
    compressor = spdy.HeaderCompressor()
    sent: list[dict[str, str | list[str]]] = [
        {"streamtype": "error"},
        {"Streamtype": "data", "port": "80", "requestid": "0"},
        {},
        {"x": ["a", "b"]},
    ]
    blocks = [compressor.compress(spdy.encode_header_block(headers)) for headers in sent]
    cmf, flg, *dict_id = struct.unpack(">BBI", blocks[0][:6])
    assert cmf & 0x0F == 8 and flg & 0x20  # deflate, FDICT
    assert dict_id == [zlib.adler32(DICT)]
    assert all(block.endswith(b"\x00\x00\xff\xff") for block in blocks)  # SYNC_FLUSH each
    fresh = zlib.decompressobj(zdict=DICT)
    assert [parse_block(fresh.decompress(block)) for block in blocks] == [
        {"streamtype": "error"},
        {"streamtype": "data", "port": "80", "requestid": "0"},
        {},
        {"x": "a\x00b"},
    ]


def test_header_decompressor_reads_a_go_style_stream() -> None:
    go_like = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, zdict=DICT)
    decompressor = spdy.HeaderDecompressor()
    for raw, expected in [
        (b"\x00\x00\x00\x00", {}),
        (spdy.encode_header_block({"a": "b"}), {"a": ["b"]}),
    ]:
        block = go_like.compress(raw) + go_like.flush(zlib.Z_SYNC_FLUSH)
        assert spdy.decode_header_block(decompressor.decompress(block)) == expected


def test_header_block_encoding_and_strict_decoding() -> None:
    assert spdy.encode_header_block({}) == b"\x00\x00\x00\x00"
    raw = spdy.encode_header_block({"Port": "8080"})
    assert raw == struct.pack(">II", 1, 4) + b"port" + struct.pack(">I", 4) + b"8080"
    with pytest.raises(spdy.FrameError):
        spdy.decode_header_block(raw[:-1])
    with pytest.raises(spdy.FrameError):
        spdy.decode_header_block(raw + b"x")


def test_header_names_go_would_reject_are_reported() -> None:
    # Built by hand: encode_header_block lower-cases names and merges repeats, as Go does.
    def pair(name: bytes, value: bytes) -> bytes:
        return struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value

    raw = struct.pack(">I", 2) + pair(b"Port", b"80") + pair(b"port", b"81")
    problems: list[str] = []
    assert spdy.decode_header_block(raw, problems=problems) == {"port": ["80", "81"]}
    assert problems == [
        "header name 'Port' is not lower-case",
        "header 'port' appears twice in one block",
    ]


# --------------------------------------------------------------------------------------------
# WebSocket pieces and remotecommand status


def test_ws_accept_matches_rfc6455_example() -> None:
    assert ws_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_masking_matches_rfc6455_example() -> None:
    key = bytes.fromhex("37fa213d")
    assert mask(b"Hello", key) == bytes.fromhex("7f9f4d5158")
    assert ws_frame(OP_TEXT, b"Hello", mask_key=key) == bytes.fromhex("8185 37fa213d 7f9f4d5158")


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_client_frames_are_masked_with_the_right_length_encoding(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    raw = ws_frame(OP_BINARY, payload)
    assert raw[0] == 0x82 and raw[1] & 0x80
    length, offset = raw[1] & 0x7F, 2
    if length == 126:
        (length,), offset = struct.unpack(">H", raw[2:4]), 4
    elif length == 127:
        (length,), offset = struct.unpack(">Q", raw[2:10]), 10
    key, body = raw[offset : offset + 4], raw[offset + 4 :]
    assert length == size == len(body)
    assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == payload


def test_channel_framing_binary_and_base64() -> None:
    assert encode_channel(0, b"foo\n") == b"\x00foo\n"
    assert encode_channel(0, b"foo\n", base64=True) == b"0Zm9vCg=="
    assert decode_channel(bytes([49, 67, 103, 61, 61]), base64=True) == (1, b"\n")  # wsstream doc
    pairs = channel_frames([b"\x01", b"\x01out", b"\x02err", b"\x01put"])
    assert pairs == [(1, b""), (1, b"out"), (2, b"err"), (1, b"put")]
    assert join_channels(pairs) == {1: b"output", 2: b"err"}
    with pytest.raises(ValueError, match=r"base64|Incorrect|Non-base64"):
        decode_channel(b"1***", base64=True)


def test_with_query_repeats_the_port_key() -> None:
    assert with_query("http://h:1/portforward/t", {"port": ["80", "81"]}) == (
        "http://h:1/portforward/t?port=80&port=81"
    )


SUCCESS = b'{"metadata":{},"status":"Success"}'
EXIT_3 = (
    b'{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: 3",'
    b'"reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}'
)
INTERNAL = (
    b'{"metadata":{},"status":"Failure","message":"Internal error occurred: boom",'
    b'"reason":"InternalError","details":{"causes":[{"message":"boom"}]},"code":500}'
)


@pytest.mark.parametrize(
    ("protocol", "raw", "status", "code"),
    [
        ("v4.channel.k8s.io", SUCCESS, {"metadata": {}, "status": "Success"}, 0),
        ("v4.channel.k8s.io", EXIT_3, json.loads(EXIT_3), 3),
        ("v5.channel.k8s.io", INTERNAL, json.loads(INTERNAL), None),
        ("v4.base64.channel.k8s.io", b"", None, 0),
        ("v3.channel.k8s.io", b"boom", {"message": "boom"}, None),
        ("channel.k8s.io", b"", None, 0),
    ],
)
def test_status_parsing(protocol: str, raw: bytes, status: Any, code: int | None) -> None:
    assert parse_status(protocol, raw) == status
    assert exit_code(parse_status(protocol, raw)) == code


def test_status_parsing_rejects_non_json_for_v4() -> None:
    with pytest.raises(StatusParseError):
        parse_status("v4.channel.k8s.io", b"plain text")


def test_resize_messages_and_versions() -> None:
    assert resize_message(80, 24) == b'{"Width":80,"Height":24}\n'
    versions = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io", ""]
    assert [protocol_version(p) for p in versions] == [5, 4, 2, 1, 1]


# --------------------------------------------------------------------------------------------
# A minimal fake SPDY peer

SERVER_PROTOCOLS = ("v4.channel.k8s.io", "portforward.k8s.io")


def ctl(kind: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">HHI", 0x8003, kind, flags << 24 | len(payload)) + payload


def dat(stream_id: int, data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">II", stream_id, flags << 24 | len(data)) + data


class FakeSpdyPeer:
    """Upgrade; SYN_REPLY each stream (RST_STREAM for a ``reject`` header, DATA first for
    ``early``); echo DATA and FIN; GOAWAY on b"goaway"; echo odd PINGs and send one of its own;
    and a toy exec: once stdin ends, stdin upper-cased on stdout, "err" on stderr, exit 3."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, list[tuple[str, str]]]] = []
        self.opened: list[dict[str, str]] = []
        self.received: dict[str, bytes] = {}
        self.ping_echoed = asyncio.Event()
        self.url = ""
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FakeSpdyPeer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            request_line, *lines = head.split("\r\n")
            method, path, _ = request_line.split(" ")
            headers = [(k, v) for k, _, v in (line.partition(": ") for line in lines if line)]
            self.requests.append((method, path, headers))
            offered = [v for k, v in headers if k.lower() == "x-stream-protocol-version"]
            chosen = next((p for p in offered if p in SERVER_PROTOCOLS), None)
            if path == "/missing":
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
            elif chosen is None:
                accepted = "".join(
                    f"X-Accepted-Stream-Protocol-Versions: {p}\r\n" for p in SERVER_PROTOCOLS
                )
                writer.write(
                    f"HTTP/1.1 403 Forbidden\r\n{accepted}Content-Length: 2\r\n\r\nno".encode()
                )
            else:
                upgrade = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                version = f"X-Stream-Protocol-Version: {chosen}\r\n"
                response = f"HTTP/1.1 101 Switching Protocols\r\n{upgrade}{version}\r\n"
                # A PING in the same write: bytes after the head already belong to SPDY.
                writer.write(response.encode() + ctl(6, struct.pack(">I", 2)))
                await self._frames(reader, writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, zdict=DICT)
        decompressor = zlib.decompressobj(zdict=DICT)
        streams: dict[int, dict[str, str]] = {}
        while True:
            head = await reader.readexactly(8)
            word, flags_length = struct.unpack(">II", head)
            payload = await reader.readexactly(flags_length & 0xFFFFFF)
            fin = flags_length >> 24 & 1
            if not word & 0x80000000:
                self._data(writer, streams, word, payload, fin)
            elif word & 0xFFFF == 1:  # SYN_STREAM
                (stream_id,) = struct.unpack_from(">I", payload)
                streams[stream_id] = parse_block(decompressor.decompress(payload[10:]))
                self.opened.append(streams[stream_id])
                if "reject" in streams[stream_id]:
                    writer.write(ctl(3, struct.pack(">II", stream_id, 3)))
                    continue
                if "early" in streams[stream_id]:
                    writer.write(dat(stream_id, b"too early"))
                empty = compressor.compress(b"\x00" * 4) + compressor.flush(zlib.Z_SYNC_FLUSH)
                writer.write(ctl(2, struct.pack(">I", stream_id) + empty))
            elif word & 0xFFFF == 6:  # PING
                if struct.unpack(">I", payload)[0] % 2:
                    writer.write(head + payload)
                else:
                    self.ping_echoed.set()
            elif word & 0xFFFF == 7:  # GOAWAY
                return

    def _data(
        self,
        writer: asyncio.StreamWriter,
        streams: dict[int, dict[str, str]],
        stream_id: int,
        data: bytes,
        fin: int,
    ) -> None:
        kind = streams[stream_id].get("streamtype", "")
        self.received[kind] = self.received.get(kind, b"") + data
        if data == b"goaway":
            writer.write(ctl(7, struct.pack(">II", stream_id, 0)))
        elif kind == "stdin" and fin:
            by_kind = {headers.get("streamtype"): sid for sid, headers in streams.items()}
            for name, output in (("stdout", self.received["stdin"].upper()), ("stderr", b"err")):
                if name in by_kind:
                    writer.write(dat(by_kind[name], output) + dat(by_kind[name], b"", 1))
            writer.write(dat(by_kind["error"], EXIT_3, 1))
        elif kind in ("", "data", "error"):
            if data:
                writer.write(dat(stream_id, data))
            if fin:
                writer.write(dat(stream_id, b"", 1))


@pytest.fixture
async def peer() -> AsyncIterator[FakeSpdyPeer]:
    async with FakeSpdyPeer() as fake:
        yield fake


async def test_upgrade_offers_one_header_line_per_protocol(peer: FakeSpdyPeer) -> None:
    offered = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"]
    async with await spdy.connect(peer.url + "/exec/t", offered) as conn:
        assert conn.protocol == "v4.channel.k8s.io"
        await asyncio.wait_for(peer.ping_echoed.wait(), 5)  # the PING that came with the 101
        assert conn.server_pings == [2]
    method, path, headers = peer.requests[0]
    assert (method, path) == ("POST", "/exec/t")
    assert [v for k, v in headers if k == "X-Stream-Protocol-Version"] == offered
    assert ("Connection", "Upgrade") in headers and ("Upgrade", "SPDY/3.1") in headers


async def test_upgrade_failures_carry_status_headers_and_body(peer: FakeSpdyPeer) -> None:
    with pytest.raises(spdy.UpgradeError) as missing:
        await spdy.connect(peer.url + "/missing", ["v4.channel.k8s.io"])
    assert (missing.value.status, missing.value.body) == (404, b"not found")
    with pytest.raises(spdy.UpgradeError) as forbidden:
        await spdy.connect(peer.url + "/exec/t", ["v9.channel.k8s.io"])
    assert forbidden.value.status == 403
    assert forbidden.value.header_values("x-accepted-stream-protocol-versions") == list(
        SERVER_PROTOCOLS
    )


async def test_stream_reply_data_and_fin(peer: FakeSpdyPeer) -> None:
    async with await spdy.connect(peer.url + "/exec/t", ["v4.channel.k8s.io"]) as conn:
        stream = await conn.open_stream({"Purpose": "echo"})
        assert stream.reply_headers == {}
        big = bytes(range(256)) * 1000
        await stream.write(b"hello ")
        await stream.write(big)
        await stream.close()
        assert await stream.read_all(timeout=5) == b"hello " + big
        assert stream.end_reason == "fin"
        assert conn.violations == []
    assert peer.opened == [{"purpose": "echo"}]


async def test_rst_stream_refuses_the_open_and_the_connection_goes_on(peer: FakeSpdyPeer) -> None:
    async with await spdy.connect(peer.url + "/exec/t", ["v4.channel.k8s.io"]) as conn:
        with pytest.raises(spdy.StreamRefused) as refused:
            await conn.open_stream({"reject": "yes"}, timeout=5)
        assert (refused.value.stream_id, refused.value.status) == (1, spdy.RstStatus.REFUSED_STREAM)
        assert conn.streams[1].reset_status == 3
        stream = await conn.open_stream({}, timeout=5)
        assert stream.id == 3


async def test_reply_wait_times_out_and_can_be_retried(peer: FakeSpdyPeer) -> None:
    async with await spdy.connect(peer.url + "/exec/t", ["v4.channel.k8s.io"]) as conn:
        stream = await conn.open_stream({}, wait_reply=False)
        with pytest.raises(spdy.ReplyTimeout):
            await stream.wait_reply(timeout=0)
        assert await stream.wait_reply(timeout=5) == {}


async def test_ping_round_trips(peer: FakeSpdyPeer) -> None:
    async with await spdy.connect(peer.url + "/exec/t", ["v4.channel.k8s.io"]) as conn:
        assert await conn.ping(timeout=5) >= 0
        assert await conn.ping(timeout=5) >= 0


async def test_goaway_ends_every_stream_and_refuses_new_ones(peer: FakeSpdyPeer) -> None:
    async with await spdy.connect(peer.url + "/exec/t", ["v4.channel.k8s.io"]) as conn:
        idle = await conn.open_stream({})
        trigger = await conn.open_stream({})
        await trigger.write(b"goaway")
        assert await idle.read_all(timeout=5) == b""
        assert idle.end_reason == "goaway"
        assert conn.goaway == (trigger.id, spdy.GoAwayStatus.OK)
        with pytest.raises(spdy.ConnectionGone):
            await conn.open_stream({})


async def test_raw_frames_and_recorded_violations(peer: FakeSpdyPeer) -> None:
    async with await spdy.connect(peer.url + "/exec/t", ["v4.channel.k8s.io"]) as conn:
        stream = await conn.open_stream({})
        await conn.send_raw(spdy.data_frame(stream.id, b"raw", spdy.FLAG_FIN))
        assert await stream.read_all(timeout=5) == b"raw"
        early = await conn.open_stream({"early": "1"}, timeout=5)
        await early.close()
        assert await early.read_all(timeout=5) == b""  # the early DATA was dropped...
        assert conn.violations == [f"DATA on stream {early.id} before its SYN_REPLY (dropped)"]


async def test_exec_creates_streams_in_order_and_reads_the_status(peer: FakeSpdyPeer) -> None:
    result = await exec_spdy(peer.url + "/exec/t", stdin=b"hello", timeout=10)
    assert (result.stdout, result.stderr, result.exit_code) == (b"HELLO", b"err", 3)
    assert result.protocol == "v4.channel.k8s.io"
    assert [h["streamtype"] for h in peer.opened] == ["error", "stdin", "stdout", "stderr"]


async def test_exec_with_tty_sends_resizes_on_its_own_stream(peer: FakeSpdyPeer) -> None:
    async def typed() -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.sleep(0.01)
        yield b"b"

    result = await exec_spdy(
        peer.url + "/exec/t", stdin=typed(), tty=True, resize=[(80, 24), (100, 30)], timeout=10
    )
    assert (result.stdout, result.stderr) == (b"AB", b"")
    assert [h["streamtype"] for h in peer.opened] == ["error", "stdin", "stdout", "resize"]
    assert peer.received["resize"] == b'{"Width":80,"Height":24}\n{"Width":100,"Height":30}\n'


async def test_port_forward_pairs_many_connections_on_one_session(peer: FakeSpdyPeer) -> None:
    async with await forward_spdy(peer.url + "/portforward/t", 8080) as session:
        forwarded = await asyncio.gather(*(session.open() for _ in range(5)))
        for conn in forwarded:
            await conn.write(b"request %d" % conn.request_id)
            await conn.close_write()
        for conn in forwarded:
            assert await conn.read_all(timeout=5) == b"request %d" % conn.request_id
            assert await conn.error(timeout=5) == ""
            assert conn.error_stream.id < conn.data_stream.id
    assert sorted(conn.request_id for conn in forwarded) == [0, 1, 2, 3, 4]
    for request_id in range(5):
        pair = [h for h in peer.opened if h["requestid"] == str(request_id)]
        assert pair == [
            {"streamtype": "error", "port": "8080", "requestid": str(request_id)},
            {"streamtype": "data", "port": "8080", "requestid": str(request_id)},
        ]


# --------------------------------------------------------------------------------------------
# A minimal fake WebSocket exec peer


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    assert len(payload) < 126
    return bytes([(0x80 if fin else 0) | opcode, len(payload)]) + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    assert second & 0x80, "client frames must be masked"
    size = second & 0x7F
    key = await reader.readexactly(4)
    body = await reader.readexactly(size)
    return first & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body))


@pytest.mark.parametrize("subprotocol", ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"])
async def test_exec_websocket_handles_fragments_pings_and_close(subprotocol: str) -> None:
    b64 = "base64" in subprotocol
    seen: list[tuple[int, bytes]] = []
    served = asyncio.Event()

    def message(channel: int, payload: bytes) -> bytes:
        if b64:
            return bytes([48 + channel]) + base64.b64encode(payload)
        return bytes([channel]) + payload

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if line)
            digest = hashlib.sha1(
                (fields["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()
            )
            accept = base64.b64encode(digest.digest()).decode()
            writer.write(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n"
                f"Sec-WebSocket-Protocol: {fields['Sec-WebSocket-Protocol']}\r\n\r\n".encode()
            )
            opcode = OP_TEXT if b64 else OP_BINARY
            out = message(1, b"out")
            writer.write(server_frame(opcode, message(1, b"")))  # ready
            writer.write(server_frame(9, b"hb"))
            writer.write(server_frame(opcode, out[:2], fin=False) + server_frame(0, out[2:]))
            writer.write(server_frame(opcode, message(2, b"err")))
            writer.write(server_frame(opcode, message(3, SUCCESS)))
            while len(seen) < 2:  # stdin and the pong, in either order
                seen.append(await read_client_frame(reader))
            writer.write(server_frame(8, struct.pack(">H", 1000)))
            seen.append(await read_client_frame(reader))
        finally:
            writer.close()
            served.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/exec/t"
        result = await exec_websocket(url, subprotocol=subprotocol, stdin=b"in", timeout=10)
        await asyncio.wait_for(served.wait(), 5)
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
    assert (result.stdout, result.stderr, result.exit_code) == (b"out", b"err", 0)
    assert result.protocol == subprotocol
    assert result.messages[0] == (1, b"")
    assert result.violations == []
    assert sorted(seen[:2]) == sorted(
        [(OP_TEXT if b64 else OP_BINARY, message(0, b"in")), (0xA, b"hb")]
    )
    assert seen[2] == (8, struct.pack(">H", 1000))


def test_control_frame_builder_is_what_we_think() -> None:
    # The abuse tests (tests/integration/test_streaming_abuse.py) rely on the client's
    # builder: type 77 with an 8-byte body.
    frame = spdy.control_frame(77, b"\0" * 8)
    assert struct.unpack(">HHI", frame[:8]) == (0x8003, 77, 8)
