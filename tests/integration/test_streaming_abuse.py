"""Bad clients against the streaming server: each is cut off cleanly, nothing leaks, the
agent keeps serving. Driven by the independent client in ``tests.support.spdy_client``."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time

import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import environment, images  # noqa: F401  (fixture)
from tests.support import remotecommand_client as rc
from tests.support.network import stream_echo_server
from tests.support.portforward_client import forward_spdy
from tests.support.spdy_client import (
    GoAwayStatus,
    UpgradeError,
    connect,
    control_frame,
    data_frame,
    http_upgrade,
    syn_stream,
)

pytestmark = pytest.mark.integration

CREATION_TIMEOUT = 2.0


@pytest.fixture
async def env(short_dir, images):  # noqa: F811
    overrides = {
        "streaming.stream_creation_timeout_seconds": CREATION_TIMEOUT,
        "streaming.token_ttl_seconds": 3.0,
    }
    async with environment(short_dir, images, **overrides) as env:
        yield env


@pytest.fixture
async def app(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    return env, sid, cid


async def _exec_url(env, cid, cmd, **kw) -> str:
    flags = {"stdout": True, "stderr": True, **kw}
    return (await env.cri.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=cmd, **flags))).url


async def _netns(env, sid) -> str:
    status = await env.cri.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)
    )
    return json.loads(status.info["info"])["netns"]


def _goaway_status(connection) -> int | None:
    return None if connection.goaway is None else connection.goaway[1]


def _marker() -> str:
    return str(int(time.time() * 1e6))


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


async def _eventually_none(marker: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _processes_with(marker):
        assert time.monotonic() < deadline, f"processes with {marker} still run"
        await asyncio.sleep(0.05)


async def _still_serves(env, cid) -> None:
    result = await rc.exec_spdy(await _exec_url(env, cid, ["echo", "alive"]))
    assert result.stdout == b"alive\n"
    assert result.exit_code == 0


async def _started_exec(env, cid, marker):
    """A connection whose exec (``sleep <marker>``) runs, with every stream open."""
    url = await _exec_url(env, cid, ["sleep", marker], stdin=True)
    connection = await connect(url, ["v4.channel.k8s.io"])
    streams = {}
    for kind in ("error", "stdin", "stdout", "stderr"):
        streams[kind] = await connection.open_stream({"streamtype": kind})
    deadline = time.monotonic() + 10
    while not _processes_with(marker):
        assert time.monotonic() < deadline, "the exec never started"
        await asyncio.sleep(0.05)
    return connection, streams


# -- broken framing -----------------------------------------------------------------------


async def test_garbage_after_the_upgrade(app):
    env, _, cid = app
    marker = _marker()
    connection = await connect(await _exec_url(env, cid, ["sleep", marker]), ["v4.channel.k8s.io"])
    await connection.send_raw(b"\xff\xfe garbage " + os.urandom(4096))
    await connection.wait_closed(timeout=10)
    await connection.close()
    assert not _processes_with(marker)
    await _still_serves(env, cid)


async def test_a_frame_longer_than_its_length_kills_the_session(app):
    env, _, cid = app
    marker = _marker()
    connection, streams = await _started_exec(env, cid, marker)
    # Four bytes declared, sixty-four sent: the rest reads as a frame of a bogus version.
    frame = data_frame(streams["stdin"].id, b"abcd")
    await connection.send_raw(frame + b"\xff" * 60)
    await connection.wait_closed(timeout=10)
    await connection.close()
    assert _goaway_status(connection) == GoAwayStatus.PROTOCOL_ERROR
    await _eventually_none(marker)
    await _still_serves(env, cid)


async def test_an_unknown_frame_type(app):
    env, _, cid = app
    marker = _marker()
    connection, _ = await _started_exec(env, cid, marker)
    await connection.send_raw(control_frame(77, b"\0" * 8))
    await connection.wait_closed(timeout=10)
    await connection.close()
    assert _goaway_status(connection) == GoAwayStatus.PROTOCOL_ERROR
    await _eventually_none(marker)
    await _still_serves(env, cid)


async def test_a_header_block_that_does_not_decompress(app):
    env, _, cid = app
    connection = await connect(await _exec_url(env, cid, ["true"]), ["v4.channel.k8s.io"])
    await connection.send_raw(syn_stream(1, b"this is not a zlib stream at all"))
    await connection.wait_closed(timeout=10)
    await connection.close()
    assert _goaway_status(connection) == GoAwayStatus.PROTOCOL_ERROR
    await _still_serves(env, cid)


async def test_a_huge_header_block_is_refused(app):
    env, _, cid = app
    connection = await connect(await _exec_url(env, cid, ["true"]), ["v4.channel.k8s.io"])
    block = connection.compress_headers({"streamtype": "error", "x": "y" * (2 << 20)})
    await connection.send_raw(syn_stream(connection.reserve_stream_id(), block))
    await connection.wait_closed(timeout=10)
    await connection.close()
    assert _goaway_status(connection) == GoAwayStatus.PROTOCOL_ERROR
    await _still_serves(env, cid)


# -- slow, silent and vanishing clients ----------------------------------------------------


async def test_streams_that_never_all_arrive_time_out(app):
    env, _, cid = app
    marker = _marker()
    url = await _exec_url(env, cid, ["sleep", marker], stdin=True)
    connection = await connect(url, ["v4.channel.k8s.io"])
    await connection.open_stream({"streamtype": "error"})  # and nothing else
    started = time.monotonic()
    await connection.wait_closed(timeout=CREATION_TIMEOUT + 10)
    await connection.close()
    assert time.monotonic() - started >= CREATION_TIMEOUT - 0.5
    assert not _processes_with(marker)


async def test_a_request_head_that_never_ends_times_out(app):
    env, _, cid = app
    url = await _exec_url(env, cid, ["true"])
    host, port = url.split("/")[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /exec/x HTTP/1.1\r\nHost: a\r\n")  # no blank line, ever
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), CREATION_TIMEOUT + 10) == b""
    writer.close()


async def test_a_client_that_disappears_mid_stream_takes_its_process_along(app):
    env, _, cid = app
    marker = _marker()
    connection, _ = await _started_exec(env, cid, marker)
    await connection.close(goaway=False)
    await _eventually_none(marker)
    assert _processes_with(marker) == []


async def test_a_tty_exec_dies_with_its_client(app):
    env, _, cid = app
    marker = _marker()
    url = await _exec_url(env, cid, ["sleep", marker], tty=True, stdin=True, stderr=False)
    connection = await connect(url, ["v4.channel.k8s.io"])
    for kind in ("error", "stdin", "stdout", "resize"):
        await connection.open_stream({"streamtype": kind})
    deadline = time.monotonic() + 10
    while not _processes_with(marker):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await connection.close(goaway=False)
    await _eventually_none(marker)


async def test_pings_are_echoed_and_goaway_ends_the_session(app):
    env, _, cid = app
    marker = _marker()
    connection, _ = await _started_exec(env, cid, marker)
    assert await connection.ping() < 5
    await connection.close()  # GOAWAY, then close
    await _eventually_none(marker)


async def test_a_port_forward_pair_left_incomplete_gets_an_error(app):
    env, sid, _ = app
    url = (await env.cri.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=sid))).url
    async with await forward_spdy(url, 80) as session:
        connection = session.connection
        error = await connection.open_stream(
            {"streamtype": "error", "port": "80", "requestid": "5"}
        )
        text = await error.read_all(timeout=CREATION_TIMEOUT + 10)
        assert b"timed out" in text
        assert await connection.ping() < 5  # the connection itself lives on


async def test_port_forward_streams_with_a_bad_port_are_refused(app):
    env, sid, _ = app
    url = (await env.cri.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=sid))).url
    async with await forward_spdy(url, 80) as session:
        for port in ("0", "65536", "http", "-1"):
            stream = await session.connection.open_stream(
                {"streamtype": "data", "port": port}, wait_reply=False
            )
            with pytest.raises(Exception, match=r"refused|reset|REFUSED"):
                await stream.wait_reply(5)


async def test_1000_concurrent_streams_on_one_connection(app):
    env, sid, cid = app
    url = (await env.cri.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=sid))).url
    async with (
        stream_echo_server(await _netns(env, sid), 7000),
        await forward_spdy(url, 7000) as session,
    ):
        # 500 connections = 1000 streams at once, on one SPDY connection.
        async def one(i: int) -> str:
            conn = await session.open()
            payload = f"connection {i} ".encode() * 64
            await conn.write(payload)
            await conn.close_write()
            echoed = await conn.read_all(timeout=120)
            if echoed == payload:
                return "ok"
            return f"{len(echoed)} bytes, error {await conn.error(timeout=5)!r}"

        results = await asyncio.gather(*(one(i) for i in range(500)))
        failures = [r for r in results if r != "ok"]
        assert not failures, (len(failures), failures[:3])
        assert await session.connection.ping() < 5
    await _still_serves(env, cid)


# -- HTTP-level refusals ------------------------------------------------------------------


async def test_http_refusals(app):
    env, _, cid = app
    url = await _exec_url(env, cid, ["true"])
    base = url.rsplit("/", 2)[0]
    upgrade = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
    with pytest.raises(UpgradeError) as info:  # no protocol offered
        await http_upgrade(url, "POST", upgrade)
    assert info.value.status == 400
    url = await _exec_url(env, cid, ["true"])
    with pytest.raises(UpgradeError) as info:  # nothing we speak
        await connect(url, ["v9.channel.k8s.io", "portforward.k8s.io"])
    assert info.value.status == 403
    assert info.value.header_values("X-Accepted-Stream-Protocol-Versions") == [
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ]
    for path in ("/exec/unknown-token", "/nothing/here", "/attach/"):
        with pytest.raises(UpgradeError) as info:
            await connect(base + path, ["v4.channel.k8s.io"])
        assert info.value.status == 404
    url = await _exec_url(env, cid, ["true"])  # an exec token on the attach route
    with pytest.raises(UpgradeError) as info:
        await connect(url.replace("/exec/", "/attach/"), ["v4.channel.k8s.io"])
    assert info.value.status == 404
    url = await _exec_url(env, cid, ["true"])
    with pytest.raises(UpgradeError) as info:
        await http_upgrade(
            url, "PUT", [*upgrade, ("X-Stream-Protocol-Version", "v4.channel.k8s.io")]
        )
    assert info.value.status == 405
    url = await _exec_url(env, cid, ["true"])
    with pytest.raises(UpgradeError) as info:  # WebSocket with an unknown subprotocol
        await rc.ws_connect(url, ["v9.channel.k8s.io"])
    assert info.value.status == 403
    await _still_serves(env, cid)


async def test_unused_tokens_expire(app):
    env, _, cid = app
    url = await _exec_url(env, cid, ["true"])
    await asyncio.sleep(3.5)
    with pytest.raises(UpgradeError) as info:
        await connect(url, ["v4.channel.k8s.io"])
    assert info.value.status == 404


def test_control_frame_builder_is_what_we_think():
    # The abuse above relies on the client's builder: type 77 with an 8-byte body.
    frame = control_frame(77, b"\0" * 8)
    assert struct.unpack(">HHI", frame[:8]) == (0x8003, 77, 8)
