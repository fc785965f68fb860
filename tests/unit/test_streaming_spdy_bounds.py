"""What a SPDY client can make the server hold: refused streams, per-stream and per-connection
limits on unread data, and the release of everything when the connection ends.

The server is ``agent.streaming.spdy.SpdyConnection`` on a loopback socket; the client is the
independent one in ``tests.support.spdy_client`` (no HTTP upgrade: both start in SPDY).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from agent.streaming import inbox, spdy
from agent.streaming.inbox import CONNECTION_BUFFER_LIMIT, INBOX_BUFFER_LIMIT, READ_PIECE
from agent.streaming.spdy import SpdyConnection, SpdyStream
from tests.support.spdy_client import (
    GoAwayStatus,
    RstStatus,
    SpdyClientConnection,
    StreamRefused,
    data_frame,
    syn_stream,
)

#: Room for one piece past a limit: the reader feeds a piece, then checks.
SLACK = READ_PIECE


@dataclass
class Pair:
    server: SpdyConnection
    client: SpdyClientConnection
    serving: asyncio.Task[None]

    async def accepted(self) -> SpdyStream:
        return await asyncio.wait_for(self.server.incoming.get(), 5)


@pytest.fixture
async def pair() -> AsyncIterator[Callable[[Callable[[SpdyStream], bool]], asyncio.Future[Pair]]]:
    made: list[Pair] = []
    servers: list[asyncio.Server] = []

    async def make(accept: Callable[[SpdyStream], bool]) -> Pair:
        ready: asyncio.Future[tuple[SpdyConnection, asyncio.Task[None]]] = (
            asyncio.get_running_loop().create_future()
        )

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connection = SpdyConnection(reader, writer, server=True, accept=accept)
            task = asyncio.current_task()
            assert task is not None
            ready.set_result((connection, task))
            with contextlib.suppress(asyncio.CancelledError):  # the test ended
                await connection.serve()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1]
        )
        client = SpdyClientConnection(reader, writer)
        connection, task = await ready
        made.append(Pair(connection, client, task))
        return made[-1]

    yield make  # type: ignore[misc]
    for each in made:
        each.client._writer.transport.abort()
        await each.client.close(goaway=False)
        each.serving.cancel()
        await asyncio.gather(each.serving, return_exceptions=True)
    for server in servers:
        server.close()
        await server.wait_closed()


async def _settle(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "never settled"
        await asyncio.sleep(0.02)


async def test_a_refused_stream_gets_refused_stream_and_its_data_is_dropped(pair):
    link = await pair(lambda stream: stream.header("streamtype") == "stdin")
    refused = await link.client.open_stream({"streamtype": "bogus"}, wait_reply=False)
    with pytest.raises(StreamRefused) as info:
        await refused.wait_reply(5)
    assert info.value.status == RstStatus.REFUSED_STREAM
    await refused.write(bytes(16 << 20))  # a refused stream's data is read and dropped
    assert await link.client.ping() < 5  # everything before the ping was read
    assert link.server.budget.used == 0
    assert refused.id not in link.server.streams
    wanted = await link.client.open_stream({"streamtype": "stdin"})
    await wanted.write(b"still served")
    assert await (await link.accepted()).read() == b"still served"


async def test_one_stream_nobody_reads_holds_at_most_its_limit(pair):
    link = await pair(lambda stream: True)
    stream = await link.client.open_stream({"streamtype": "stdin"})
    accepted = await link.accepted()
    writing = asyncio.ensure_future(stream.write(bytes(16 << 20)))
    await _settle(lambda: accepted.inbox.buffered >= INBOX_BUFFER_LIMIT)
    await asyncio.sleep(0.5)
    assert not writing.done()  # TCP pushes back on the client
    assert accepted.inbox.buffered <= INBOX_BUFFER_LIMIT + SLACK
    accepted.discard()  # the reader is gone: the rest is dropped as it comes
    await asyncio.wait_for(writing, 20)
    assert await link.client.ping() < 5
    assert link.server.budget.used == 0


async def test_many_streams_together_hold_at_most_the_connections_limit(pair):
    link = await pair(lambda stream: True)
    streams = [await link.client.open_stream({"streamtype": f"s{i}"}) for i in range(32)]
    accepted = [await link.accepted() for _ in streams]
    each = INBOX_BUFFER_LIMIT * 3 // 4  # under a stream's limit; 32 of them are 24 MiB
    writes = [asyncio.ensure_future(s.write(bytes(each))) for s in streams]
    await _settle(lambda: link.server.budget.used >= CONNECTION_BUFFER_LIMIT)
    await asyncio.sleep(0.5)
    assert link.server.budget.used <= CONNECTION_BUFFER_LIMIT + SLACK
    assert all(s.inbox.buffered <= each for s in accepted)
    # Readers taking what they hold let the rest in.
    got = 0
    for stream in accepted:
        taken = 0
        while taken < each:
            taken += len(await asyncio.wait_for(stream.read(), 5))
        got += taken
    await asyncio.wait_for(asyncio.gather(*writes), 20)
    assert got == 32 * each
    assert link.server.budget.used == 0


async def test_a_16_mib_frame_reaches_its_reader_in_pieces(pair):
    link = await pair(lambda stream: True)
    stream = await link.client.open_stream({"streamtype": "stdin"})
    accepted = await link.accepted()
    payload = bytes(range(256)) * (((16 << 20) - 1) // 256)
    writing = asyncio.ensure_future(stream.write(payload))
    got = bytearray()
    biggest = 0
    while len(got) < len(payload):
        chunk = await asyncio.wait_for(accepted.read(), 5)
        biggest = max(biggest, len(chunk))
        got += chunk
    await writing
    assert got == payload
    assert biggest <= INBOX_BUFFER_LIMIT  # never the whole 16 MiB frame at once


async def test_the_connections_end_releases_what_its_streams_held(pair, monkeypatch):
    monkeypatch.setattr(inbox, "STALL_PING_INTERVAL", 0.2)
    link = await pair(lambda stream: True)
    stream = await link.client.open_stream({"streamtype": "stdin"})
    accepted = await link.accepted()
    writing = asyncio.ensure_future(stream.write(bytes(8 << 20)))
    await _settle(lambda: accepted.inbox.buffered >= INBOX_BUFFER_LIMIT)
    # The client dies with the server's reader stalled: the stall pings find out.
    writing.cancel()
    await asyncio.gather(writing, return_exceptions=True)
    link.client._writer.transport.abort()
    await asyncio.wait_for(link.serving, 10)
    assert link.server.closed.is_set()
    assert link.server.budget.used == 0
    assert link.server.streams == {}
    assert await accepted.read() == b""  # aborted: what it held is gone


@pytest.mark.parametrize("goaway", [True, False], ids=["goaway", "eof"])
async def test_what_came_before_the_peer_closed_stays_readable(pair, goaway):
    # An exec's server writes the exit status, then GOAWAY and closes at once: a
    # client that dropped what it had not read yet lost the status (and stderr).
    link = await pair(lambda stream: True)
    error = await link.client.open_stream({"streamtype": "error"})
    stderr = await link.client.open_stream({"streamtype": "stderr"})
    accepted = {s.header("streamtype"): s for s in [await link.accepted(), await link.accepted()]}
    await stderr.write(b"to-stderr\n")
    await error.write(b'{"status":"Failure","reason":"NonZeroExitCode"}')
    await link.client.close(goaway=goaway)
    await asyncio.wait_for(link.serving, 10)
    assert link.server.closed.is_set()
    assert await accepted["stderr"].read_all() == b"to-stderr\n"
    assert await accepted["error"].read_all() == b'{"status":"Failure","reason":"NonZeroExitCode"}'
    with pytest.raises(ConnectionError):
        await accepted["error"].write(b"nobody hears this")


async def test_a_connection_cut_inside_a_frame_aborts_the_streams(pair):
    # A peer that dies mid-write left a frame cut short: what the stream holds may be a
    # partial status, so it is not kept as if the peer had finished.
    link = await pair(lambda stream: True)
    error = await link.client.open_stream({"streamtype": "error"})
    accepted = await link.accepted()
    await error.write(b'{"status":')
    await link.client.send_raw(data_frame(error.id, b"Success}")[:-3])  # a frame cut short
    await link.client.close(goaway=False)
    await asyncio.wait_for(link.serving, 10)
    assert await accepted.read_all() == b""
    assert link.server.budget.used == 0


async def test_close_releases_what_a_closed_peer_left_unread(pair):
    link = await pair(lambda stream: True)
    stream = await link.client.open_stream({"streamtype": "stdin"})
    accepted = await link.accepted()
    await stream.write(bytes(1 << 20))
    await link.client.close()
    await asyncio.wait_for(link.serving, 10)
    assert link.server.budget.used == 1 << 20  # kept for a reader, until the owner closes
    await link.server.close()
    assert link.server.budget.used == 0
    assert link.server.streams == {}
    assert await accepted.read() == b""


async def test_a_header_block_with_too_many_pairs_ends_the_connection(pair):
    link = await pair(lambda stream: True)
    headers = {f"h{i}": "v" for i in range(spdy.MAX_HEADER_PAIRS + 1)}
    block = link.client.compress_headers(headers)
    await link.client.send_raw(syn_stream(link.client.reserve_stream_id(), block))
    await link.client.wait_closed(timeout=5)
    assert link.client.goaway is not None
    assert link.client.goaway[1] == GoAwayStatus.PROTOCOL_ERROR
