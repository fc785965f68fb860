"""Bad clients against the streaming server: each is cut off cleanly, nothing leaks, the
agent keeps serving, and its memory stays bounded. Driven by the independent clients in
``tests.support`` against one real ``model-agent serve`` process for the module (each test
gets its own pod), whose resident memory (``VmRSS``) every test checks: at its peak where
a test floods the agent, and after each test against the RSS it started with."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_asyncio

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.ctl.client import CriClient
from tests.integration.test_pods import Env, cgroup_dirs, delete_link, images  # noqa: F401
from tests.support import remotecommand_client as rc
from tests.support.agent import AgentProcess
from tests.support.network import (
    HostNetworkState,
    free_subnet,
    silent_server,
    stream_echo_server,
)
from tests.support.portforward_client import forward_spdy
from tests.support.spdy_client import (
    GoAwayStatus,
    RstStatus,
    StreamRefused,
    UpgradeError,
    connect,
    control_frame,
    data_frame,
    http_upgrade,
    syn_stream,
)

# One agent process for the module (starting one costs seconds): tests share its loop.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

#: Short enough for the timeout tests, long enough that 500 port-forward pairs opened at once
#: by a client in another process complete on a loaded 2-core machine (2 s did not always).
CREATION_TIMEOUT = 4.0
#: What a test may add to the agent's resident memory, at its peak or left behind. A
#: connection may hold 4 MiB of unread input (agent/streaming/inbox.py); the rest is slack
#: for the allocator. The floods below would take hundreds of MiB without the bounds.
RSS_BOUND = 32 << 20


@contextlib.asynccontextmanager
async def agent_process(short_dir: str, images: dict[str, str]) -> AsyncIterator[Env]:  # noqa: F811
    """A real ``model-agent serve`` with its own bridge, subnet and cgroup parent, as
    ``test_pods.environment`` builds in-process; removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    bridge, cgroup_parent = f"ma-s{tag}", f"/ma-test-{tag}"
    config = (
        f'[network]\nbridge = "{bridge}"\npod_cidr = "{free_subnet()}"\n'
        f'cni_conf_dir = "{short_dir}/cni"\n'
        f"[streaming]\nstream_creation_timeout_seconds = {CREATION_TIMEOUT}\n"
        "token_ttl_seconds = 3.0\n"
    )
    host = HostNetworkState.capture()
    agent = AgentProcess(short_dir, config)
    await asyncio.to_thread(agent.start)
    try:
        async with CriClient(agent.socket, timeout=120) as cri:
            await cri.images.PullImage(
                pb.PullImageRequest(image=pb.ImageSpec(image=images["busybox"]))
            )
            env = Env(cast(Any, agent), cri, short_dir, cgroup_parent, images)
            try:
                yield env
            finally:
                listed = await cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
                for pod in listed.items:
                    await env.remove_pod(pod.id)
    finally:
        await asyncio.to_thread(agent.stop)
        delete_link(bridge)
        host.restore("model-agent", [])
        for path in sorted(cgroup_dirs(cgroup_parent), key=len, reverse=True):
            for dirpath, dirnames, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
                for name in dirnames:
                    os.rmdir(os.path.join(dirpath, name))
            os.rmdir(path)


def _rss(env) -> int:
    """The agent process's resident memory, in bytes."""
    with open(f"/proc/{env.agent.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _peak_rss(env, *, quiet: float = 1.5, timeout: float = 30.0) -> int:
    """The highest RSS seen until it stopped moving (within 2 MiB for ``quiet`` seconds)."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        samples.append((now, _rss(env)))
        recent = [value for at, value in samples if at >= now - quiet]
        if samples[0][0] <= now - quiet and max(recent) - min(recent) < 2 << 20:
            break
        await asyncio.sleep(0.1)
    return max(value for _, value in samples)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(images):  # noqa: F811
    base = tempfile.mkdtemp(prefix="ma-", dir="/tmp")  # short: unix socket paths
    try:
        async with agent_process(base, images) as env:
            yield env
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="module")
async def app(env):
    """A pod of its own with a running container, one exec done (the agent warmed up),
    and the agent's RSS then; after the test its RSS must be back within ``RSS_BOUND`` of
    that, and the pod is removed."""
    sid = await env.run_pod()
    try:
        cid = await env.run(sid, "app", "sleep", "1000")
        await _still_serves(env, cid)
        baseline = _rss(env)
        yield env, sid, cid
        await asyncio.sleep(0.5)
        grown = _rss(env) - baseline
        assert grown < RSS_BOUND, f"the agent kept {grown >> 20} MiB after the test"
    finally:
        await env.remove_pod(sid)


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


# -- memory: what a client can make the agent hold -----------------------------------------


async def test_streams_beyond_an_execs_own_are_refused_and_hold_no_memory(app):
    """The attack from the security issue: once an exec's streams are set up, 120 more
    streams with 8 MiB each (the agent went from 65 MiB to 1.07 GB and kept it)."""
    env, _, cid = app
    base = _rss(env)
    marker = _marker()
    connection, _ = await _started_exec(env, cid, marker)
    kinds = ("stdin", "stdout", "stderr", "error", "resize", "bogus")
    extra = [
        await connection.open_stream({"streamtype": kinds[i % len(kinds)]}, wait_reply=False)
        for i in range(120)
    ]
    payload = bytes(8 << 20)
    for stream in extra:
        await asyncio.wait_for(stream.write(payload), 60)
    assert await connection.ping(timeout=60) < 60  # the agent has read all of it
    peak = await _peak_rss(env)
    assert peak - base < RSS_BOUND, f"{(peak - base) >> 20} MiB for 960 MiB nobody reads"
    for stream in extra:
        with pytest.raises(StreamRefused) as info:
            await stream.wait_reply(5)
        assert info.value.status == RstStatus.REFUSED_STREAM
    assert _processes_with(marker)  # the exec itself goes on
    await connection.close()
    await _eventually_none(marker)
    assert _rss(env) - base < RSS_BOUND
    await _still_serves(env, cid)


async def test_port_forward_data_a_pod_does_not_read_is_bounded_per_connection(app):
    """64 forwarded connections to a pod that accepts and never reads, 8 MiB sent on
    each: the agent holds at most one connection's budget, not 512 MiB."""
    env, sid, cid = app
    base = _rss(env)
    url = (await env.cri.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=sid))).url
    async with await forward_spdy(url, 7000) as session:
        async with silent_server(await _netns(env, sid), 7000):
            forwarded = [await session.open() for _ in range(64)]
            payload = bytes(8 << 20)
            writes = [asyncio.ensure_future(conn.write(payload)) for conn in forwarded]
            peak = await _peak_rss(env)
            assert peak - base < RSS_BOUND, f"{(peak - base) >> 20} MiB held for a stuck pod"
            assert not all(w.done() for w in writes)  # TCP pushes back on the client
        # The pod's server is gone: its connections fail, the agent drops their data.
        await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 120)
        errors = [await conn.error(timeout=30) for conn in forwarded]
        assert all("error forwarding port 7000" in error for error in errors), errors[:2]
        assert await session.connection.ping(timeout=30) < 30
    assert _rss(env) - base < RSS_BOUND
    await _still_serves(env, cid)


async def test_websocket_channels_nobody_reads_hold_no_memory(app):
    """A non-tty exec never reads its resize channel, and ``sleep`` never reads stdin:
    8 messages of 16 MiB on each (the agent queued up to 64 per channel), twice."""
    env, _, cid = app
    base = _rss(env)
    big = bytes((16 << 20) - 1)  # with the channel byte, the old limit exactly
    for _ in range(2):
        marker = _marker()
        url = await _exec_url(env, cid, ["sleep", marker], stdin=True)
        ws = await rc.ws_connect(url, ["v4.channel.k8s.io"])
        deadline = time.monotonic() + 10
        while not _processes_with(marker):
            assert time.monotonic() < deadline, "the exec never started"
            await asyncio.sleep(0.05)
        for _ in range(8):
            await asyncio.wait_for(ws.send_channel(rc.RESIZE, big), 30)

        async def flood_stdin(ws: rc.WebSocketConnection = ws) -> None:
            for _ in range(8):
                await ws.send_channel(rc.STDIN, big)

        flooding = asyncio.ensure_future(flood_stdin())
        peak = await _peak_rss(env)
        assert peak - base < RSS_BOUND, f"{(peak - base) >> 20} MiB queued for no reader"
        assert not flooding.done()  # stdin's reader is stuck: TCP pushes back
        flooding.cancel()
        await asyncio.gather(flooding, return_exceptions=True)
        ws.abort()  # the client dies mid-flood; the agent finds out and kills the exec
        await _eventually_none(marker, timeout=30)
    await asyncio.sleep(0.5)
    assert _rss(env) - base < RSS_BOUND, "memory held after the connections ended"
    await _still_serves(env, cid)


async def test_a_websocket_message_over_the_limit_is_closed_with_1009(app):
    env, _, cid = app
    marker = _marker()
    url = await _exec_url(env, cid, ["sleep", marker])
    async with await rc.ws_connect(url, ["v4.channel.k8s.io"]) as ws:
        # 33 MiB for the error channel, which the agent only writes: dropped, then refused.
        await ws.send(rc.OP_BINARY, bytes([rc.ERROR]) + bytes(33 << 20))
        while await asyncio.wait_for(ws.receive(), 30) is not None:
            pass
        assert ws.close_code == 1009
    await _eventually_none(marker)
    await _still_serves(env, cid)
