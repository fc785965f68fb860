"""Exec, attach and port-forward through the streaming server, driven by independent clients.

The clients in ``tests.support`` (SPDY framing, remotecommand, port-forward, WebSocket) share
no code with ``agent.streaming``; they follow client-go's behaviour as protocols.md §3 lists it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import grpc
import pytest

from agent.api.cri.runtime.v1 import api_pb2 as pb
from tests.integration.test_pods import environment, images  # noqa: F401  (fixture)
from tests.support import remotecommand_client as rc
from tests.support.network import stream_echo_server
from tests.support.portforward_client import forward_spdy, forward_websocket
from tests.support.spdy_client import UpgradeError, connect

pytestmark = pytest.mark.integration


@pytest.fixture
async def env(short_dir, images):  # noqa: F811
    async with environment(short_dir, images) as env:
        yield env


async def _exec_url(env, cid, cmd, *, tty=False, stdin=False, stdout=True, stderr=True) -> str:
    response = await env.cri.runtime.Exec(
        pb.ExecRequest(
            container_id=cid, cmd=cmd, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr
        )
    )
    return response.url


def _exec_processes(cid_marker: str) -> list[int]:
    """Pids whose command line contains ``cid_marker`` (a unique token given to exec'd cmds)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if cid_marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


# -- exec ---------------------------------------------------------------------------------


async def test_exec_without_tty_separates_streams_and_reports_the_exit_code(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    url = await _exec_url(env, cid, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/exec/[A-Za-z0-9_-]+", url)
    result = await rc.exec_spdy(url)
    assert result.protocol == "v4.channel.k8s.io"
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert result.exit_code == 7
    assert result.status is not None
    assert result.status["reason"] == "NonZeroExitCode"
    assert not result.violations

    ok = await rc.exec_spdy(await _exec_url(env, cid, ["true"]))
    assert ok.status == {"metadata": {}, "status": "Success"}
    assert ok.exit_code == 0


async def test_exec_urls_are_one_time(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    url = await _exec_url(env, cid, ["true"])
    await rc.exec_spdy(url, method="GET")
    with pytest.raises(UpgradeError) as info:
        await rc.exec_spdy(url)
    assert info.value.status == 404


async def test_exec_of_a_missing_binary_is_an_internal_error_status(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    result = await rc.exec_spdy(await _exec_url(env, cid, ["/no/such/binary"]))
    assert result.status is not None
    assert result.status["reason"] == "InternalError"
    assert "no/such/binary" in result.status["message"]


async def test_exec_with_tty_and_resize(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    url = await _exec_url(env, cid, ["sh", "-c", "stty size; exit 3"], tty=True, stderr=False)
    result = await rc.exec_spdy(url, stderr=False, tty=True, resize=[(132, 43)])
    assert b"43 132" in result.stdout
    assert result.exit_code == 3


async def test_exec_tty_resize_while_running(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    script = "stty size; read line; stty size"
    url = await _exec_url(env, cid, ["sh", "-c", script], tty=True, stdin=True, stderr=False)

    async def sizes():
        yield (80, 24)
        await asyncio.sleep(0.5)
        yield (100, 50)

    async def typing():
        await asyncio.sleep(1.0)
        yield b"go\r"

    result = await rc.exec_spdy(url, stdin=typing(), stderr=False, tty=True, resize=sizes())
    lines = [ln.strip() for ln in result.stdout.decode().splitlines()]
    assert "24 80" in lines
    assert "50 100" in lines
    assert result.exit_code == 0


async def test_exec_stdin_50_mib_arrives_intact(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    payload = os.urandom(1 << 20) * 50
    url = await _exec_url(env, cid, ["sha256sum"], stdin=True)

    async def chunks():
        view = memoryview(payload)
        for start in range(0, len(view), 32 * 1024):  # kubectl's copy size
            yield bytes(view[start : start + 32 * 1024])

    result = await rc.exec_spdy(url, stdin=chunks(), timeout=120)
    assert result.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()
    assert result.exit_code == 0


async def test_every_remotecommand_protocol_version(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    for protocol in (
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ):
        url = await _exec_url(env, cid, ["sh", "-c", "echo hi; exit 2"])
        result = await rc.exec_spdy(url, protocols=[protocol])
        assert result.protocol == protocol
        assert result.stdout == b"hi\n"
        if protocol.startswith("v4"):
            assert result.exit_code == 2
        else:  # text error only
            assert b"exit code 2" in result.error_raw


async def test_an_exec_dies_with_its_client(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    marker = f"{int(time.time() * 1e6)}"
    url = await _exec_url(env, cid, ["sleep", f"{marker}"], stdin=True)
    connection = await connect(url, ["v4.channel.k8s.io"])
    for kind in ("error", "stdin", "stdout", "stderr"):
        await connection.open_stream({"streamtype": kind})
    for _ in range(100):
        if _exec_processes(marker):
            break
        await asyncio.sleep(0.05)
    assert _exec_processes(marker), "the exec'd process never started"
    await connection.close(goaway=False)  # the client vanishes without a word
    for _ in range(100):
        if not _exec_processes(marker):
            break
        await asyncio.sleep(0.05)
    assert not _exec_processes(marker)


# -- validation ---------------------------------------------------------------------------


async def test_streaming_rpcs_validate(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    rt = env.cri.runtime
    bad = [
        pb.ExecRequest(container_id=cid, cmd=["true"], tty=True, stdout=True, stderr=True),
        pb.ExecRequest(container_id=cid, cmd=["true"]),
        pb.ExecRequest(container_id=cid, stdout=True),
        pb.ExecRequest(cmd=["true"], stdout=True),
    ]
    for request in bad:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rt.Exec(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rt.Attach(pb.AttachRequest(container_id=cid, tty=True, stdout=True, stderr=True))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rt.Exec(pb.ExecRequest(container_id="f" * 64, cmd=["true"], stdout=True))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    done = await env.run(sid, "done", "true")
    await env.wait_exit(done)
    for call in (
        rt.Exec(pb.ExecRequest(container_id=done, cmd=["true"], stdout=True)),
        rt.Attach(pb.AttachRequest(container_id=done, stdout=True)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rt.PortForward(pb.PortForwardRequest(pod_sandbox_id="e" * 64, port=[80]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=sid, port=[70000]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- attach -------------------------------------------------------------------------------


async def test_attach_to_a_running_container(env):
    sid = await env.run_pod()
    cid = await env.run(
        sid,
        "talker",
        "sh",
        "-c",
        "read line; echo got:$line; echo oops >&2; sleep 0.2; exit 0",
        stdin=True,
        stdin_once=True,
    )
    url = (
        await env.cri.runtime.Attach(
            pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
        )
    ).url
    assert "/attach/" in url

    async def typed():
        yield b"hello\n"
        await asyncio.sleep(2)  # stdin's end would end the attach: let the container finish

    result = await rc.exec_spdy(url, stdin=typed())
    assert result.stdout == b"got:hello\n"
    assert result.stderr == b"oops\n"
    assert result.exit_code == 0


# -- port-forward -------------------------------------------------------------------------


async def _echo_pod(env) -> str:
    sid = await env.run_pod()
    # busybox nc -ll -e: one cat per connection, concurrently.
    await env.run(sid, "echo", "nc", "-ll", "-p", "7000", "-e", "cat")
    return sid


async def _forward_url(env, sid, ports=()) -> str:
    response = await env.cri.runtime.PortForward(
        pb.PortForwardRequest(pod_sandbox_id=sid, port=list(ports))
    )
    return response.url


async def _netns(env, sid) -> str:
    status = await env.cri.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)
    )
    return json.loads(status.info["info"])["netns"]


async def test_port_forward_20_parallel_connections(env):
    sid = await env.run_pod()
    url = await _forward_url(env, sid, [7000])
    # An echo server listening on the pod's loopback: only a dial inside the pod's network
    # namespace can reach it. (busybox nc -ll resets connections under parallel load.)
    async with (
        stream_echo_server(await _netns(env, sid), 7000),
        await forward_spdy(url, 7000) as session,
    ):

        async def one(i: int) -> None:
            payload = os.urandom(1 << 20) + f"end-{i}".encode()
            conn = await session.open()
            await conn.write(payload)
            await conn.close_write()
            assert await conn.read_all(timeout=60) == payload

        await asyncio.gather(*(one(i) for i in range(20)))


async def test_port_forward_reaches_a_process_in_a_container(env):
    sid = await _echo_pod(env)
    url = await _forward_url(env, sid, [7000])
    answer = b""
    async with await forward_spdy(url, 7000) as session:
        for _ in range(100):  # until nc listens
            conn = await session.open()
            await conn.write(b"hello container")
            await conn.close_write()
            answer = await conn.read_all(timeout=10)
            if answer:
                break
            await asyncio.sleep(0.1)
    assert answer == b"hello container"


async def test_port_forward_to_a_closed_port_reports_the_error(env):
    sid = await _echo_pod(env)
    url = await _forward_url(env, sid, [7001])
    async with await forward_spdy(url, 7001) as session:
        conn = await session.open()
        error = await conn.error(timeout=10)
        assert "7001" in error
        assert "refused" in error.lower()


async def test_port_forward_over_websocket(env):
    sid = await _echo_pod(env)
    for _ in range(50):
        url = await _forward_url(env, sid)
        async with await forward_websocket(url, [7000]) as forward:
            await forward.send(0, b"ping over websocket")
            echoed = await forward.read(0)
            if echoed:
                assert forward.announced_port(0) == 7000
                assert echoed.startswith(b"ping")
                return
        await asyncio.sleep(0.1)
    raise AssertionError("never got an echo")


# -- WebSocket exec -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "subprotocol",
    ["v4.channel.k8s.io", "v4.base64.channel.k8s.io", "channel.k8s.io", "v5.channel.k8s.io"],
)
async def test_websocket_exec(env, subprotocol):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    url = await _exec_url(env, cid, ["sh", "-c", "echo out; echo err >&2; exit 4"])
    result = await rc.exec_websocket(url, subprotocol=subprotocol)
    assert result.protocol == subprotocol
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert result.messages[0] == (rc.STDOUT, b"")  # the readiness message
    if subprotocol.startswith(("v4", "v5")):
        assert result.exit_code == 4
    else:
        assert b"exit code 4" in result.error_raw


# -- model-agent ctl exec -it / attach / port-forward ---------------------------------------

CTL = [sys.executable, "-m", "agent", "ctl"]


async def _ctl(env, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    argv = [*CTL, "--socket", env.agent.socket_path, *args]
    return await asyncio.to_thread(
        subprocess.run, argv, input=stdin, capture_output=True, timeout=60
    )


async def test_ctl_exec_interactive_pipes_stdin_and_returns_the_exit_code(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    done = await _ctl(
        env,
        "exec",
        "-i",
        cid,
        "sh",
        "-c",
        "cat; echo to-stderr >&2; exit 3",
        stdin=b"piped through\n",
    )
    assert done.stdout == b"piped through\n"
    assert done.stderr == b"to-stderr\n"
    assert done.returncode == 3


async def test_ctl_exec_with_a_terminal(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "app", "sleep", "1000")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    script = "stty size; tty; read line; echo typed:$line; exit 5"
    argv = [*CTL, "--socket", env.agent.socket_path, "exec", "-it", cid, "sh", "-c", script]
    proc = subprocess.Popen(  # noqa: ASYNC220  (a pty child; waited for in a thread below)
        argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    try:
        output = b""

        async def read_until(text: bytes) -> None:
            nonlocal output
            deadline = time.monotonic() + 30
            while text not in output:
                assert time.monotonic() < deadline, output
                ready: tuple[list[int], list[int], list[int]] = await asyncio.to_thread(
                    select.select, [master], [], [], 0.5
                )
                if ready[0]:
                    output += os.read(master, 4096)

        await read_until(b"/dev/pts/")
        assert b"33 101" in output  # the size the terminal had when the process started
        os.write(master, b"hello\r")
        await read_until(b"typed:hello")
        assert await asyncio.to_thread(proc.wait, 30) == 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


async def test_ctl_attach(env):
    sid = await env.run_pod()
    cid = await env.run(
        sid, "reader", "sh", "-c", "read line; echo got:$line", stdin=True, stdin_once=True
    )
    done = await _ctl(env, "attach", "-i", cid, stdin=b"over attach\n")
    assert done.stdout == b"got:over attach\n"
    assert done.returncode == 0


async def test_ctl_port_forward(env):
    sid = await env.run_pod()
    argv = [*CTL, "--socket", env.agent.socket_path, "port-forward", sid, ":7000"]
    async with stream_echo_server(await _netns(env, sid), 7000):
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            match = re.match(rb"Forwarding from 127\.0\.0\.1:(\d+) -> 7000", line)
            assert match, line
            for i in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", int(match[1]))
                writer.write(f"round {i}".encode())
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), 30) == f"round {i}".encode()
                writer.close()
        finally:
            proc.kill()
            await proc.wait()


async def test_attach_ends_when_the_clients_stdin_does(env):
    sid = await env.run_pod()
    cid = await env.run(sid, "shell", "sh", stdin=True)  # not stdin_once: stdin stays open
    request = pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    url = (await env.cri.runtime.Attach(request)).url
    started = time.monotonic()
    result = await rc.exec_spdy(url, stdin=b"echo hello\n", timeout=30)
    assert result.stdout == b"hello\n"
    assert result.exit_code == 0
    assert time.monotonic() - started < 10
    assert (await env.status(cid)).state == pb.CONTAINER_RUNNING  # its stdin is still open
    again = (await env.cri.runtime.Attach(request)).url
    assert (await rc.exec_spdy(again, stdin=b"echo again\n")).stdout == b"again\n"


async def test_websocket_attach(env):
    sid = await env.run_pod()
    cid = await env.run(
        sid, "reader", "sh", "-c", "read line; echo got:$line", stdin=True, stdin_once=True
    )
    request = pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    url = (await env.cri.runtime.Attach(request)).url
    result = await rc.attach_websocket(url, subprotocol="v5.channel.k8s.io", stdin=b"ws attach\n")
    assert result.stdout == b"got:ws attach\n"
    assert result.exit_code == 0


async def test_a_reset_port_forward_stream_leaves_the_others_alone(env):
    sid = await env.run_pod()
    url = await _forward_url(env, sid, [7000])
    async with (
        stream_echo_server(await _netns(env, sid), 7000),
        await forward_spdy(url, 7000) as session,
    ):
        doomed = await session.open()
        await doomed.write(b"half a message")
        await doomed.reset()
        survivor = await session.open()
        await survivor.write(b"still fine")
        await survivor.close_write()
        assert await survivor.read_all(timeout=30) == b"still fine"
