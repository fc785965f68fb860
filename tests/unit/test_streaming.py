"""Streaming building blocks that need no agent: dictionary, tokens, framing helpers, status."""

from __future__ import annotations

import asyncio
import hashlib
import json
import zlib

import pytest

from agent.ctl.stream_verbs import parse_port_mapping
from agent.errors import InvalidArgument, ResourceExhausted
from agent.streaming import remotecommand, spdy, websocket
from agent.streaming.dictionary import DICTIONARY, DICTIONARY_SHA256
from agent.streaming.http import BadRequest, read_request
from agent.streaming.tokens import ExecRequest, PortForwardRequest, TokenCache
from tests.support.spdy_client import DICTIONARY as CLIENT_DICTIONARY


def test_dictionary_is_the_spdy3_one():
    assert len(DICTIONARY) == 1423
    assert hashlib.sha256(DICTIONARY).hexdigest() == DICTIONARY_SHA256
    assert DICTIONARY == CLIENT_DICTIONARY  # built independently in tests/support
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICTIONARY.endswith(b"charset=utf-8charset=iso-8859-1,utf-,*,enq=0.")


def test_header_blocks_round_trip_through_shared_zlib_streams():
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, zdict=DICTIONARY)
    inflate = zlib.decompressobj(zdict=DICTIONARY)
    for headers in ({"streamtype": "error"}, {"streamtype": "data", "port": "80"}, {}):
        raw = spdy.encode_headers(headers)
        block = deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)
        assert spdy.decode_headers(inflate.decompress(block)) == headers
    with pytest.raises(spdy.ProtocolError):
        spdy.decode_headers(b"\x00\x00\x00\x02\x00\x00\x00\x01a")


def _req(n: int = 0) -> ExecRequest:
    return ExecRequest(f"c{n}", ("true",), tty=False, stdin=False, stdout=True, stderr=False)


def test_tokens_are_one_time_and_expire():
    now = [0.0]
    cache = TokenCache(ttl=10, capacity=3, clock=lambda: now[0])
    token = cache.insert(_req())
    assert len(token) >= 16
    assert cache.consume(token) == _req()
    assert cache.consume(token) is None  # used
    token = cache.insert(PortForwardRequest("s", (80,)))
    now[0] = 11
    assert cache.consume(token) is None  # expired
    assert cache.consume("never-issued") is None


def test_token_cache_is_bounded_but_drops_expired_ones_first():
    now = [0.0]
    cache = TokenCache(ttl=10, capacity=2, clock=lambda: now[0])
    cache.insert(_req(1))
    cache.insert(_req(2))
    with pytest.raises(ResourceExhausted):
        cache.insert(_req(3))
    now[0] = 20
    assert cache.consume(cache.insert(_req(3))) == _req(3)
    assert len(cache) == 0


def test_websocket_accept_key():
    assert (
        websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    )  # RFC 6455 §1.3


async def _parse(raw: bytes, timeout: float = 1.0):
    reader = asyncio.StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    return await read_request(reader, timeout)


async def test_request_heads():
    request = await _parse(
        b"POST /exec/abc?port=80&port=81 HTTP/1.1\r\nHost: x\r\n"
        b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
        b"X-Stream-Protocol-Version: v3.channel.k8s.io, channel.k8s.io\r\n\r\nleftover"
    )
    assert (request.method, request.path) == ("POST", "/exec/abc")
    assert request.query["port"] == ["80", "81"]
    assert request.header_tokens("x-stream-protocol-version") == [
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "channel.k8s.io",
    ]
    for bad in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b"GET / HTTP/1.1\r\n"):
        with pytest.raises(BadRequest):
            await _parse(bad)


def test_status_messages_match_metav1():
    assert remotecommand.success_status() == {"metadata": {}, "status": "Success"}
    status = remotecommand.exit_code_status(["sh", "-c", "exit 3"], 3)
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    failure = remotecommand.failure_status("boom")
    assert failure["code"] == 500
    assert failure["message"] == "Internal error occurred: boom"
    json.dumps(failure)


def test_port_mappings():
    assert parse_port_mapping("8080") == (8080, 8080)
    assert parse_port_mapping("9000:80") == (9000, 80)
    assert parse_port_mapping(":80") == (0, 80)
    for bad in ("http", "1:0", "70000", "a:b"):
        with pytest.raises(InvalidArgument):
            parse_port_mapping(bad)


class _Stream:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.discarded = False

    def header(self, name: str) -> str:
        return self.kind if name == "streamtype" else ""

    def discard(self) -> None:
        self.discarded = True


def test_a_session_accepts_the_streams_it_needs_once_and_refuses_the_rest():
    tty = ExecRequest("c", ("sh",), tty=True, stdin=True, stdout=True, stderr=False)
    assert remotecommand.stream_kinds(tty, v1_or_v2=False) == {"error", "stdin", "stdout", "resize"}
    assert remotecommand.stream_kinds(tty, v1_or_v2=True) == {"error", "stdin", "stdout"}
    plain = ExecRequest("c", ("true",), tty=False, stdin=False, stdout=True, stderr=True)
    expected = remotecommand.ExpectedStreams(remotecommand.stream_kinds(plain, v1_or_v2=False))
    opened = {kind: _Stream(kind) for kind in ("error", "stdout", "stderr")}
    assert all(expected.accept(stream) for stream in opened.values())
    # Streams the server only writes to drop what a client sends on them.
    assert all(stream.discarded for stream in opened.values())
    for kind in ("stdout", "stdin", "resize", "bogus", ""):
        assert not expected.accept(_Stream(kind)), kind
