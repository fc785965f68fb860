#!/usr/bin/env python3
"""Benchmark: streaming throughput (exec stdout/stdin, port-forward) against a raw loopback copy.

    .venv/bin/python bench/streaming.py [--mib 256] [--rounds 5]

Starts a real ``model-agent serve`` with one pod, then, ``--rounds`` times each:

* **exec stdout**: ``Exec`` of ``head -c <mib> /dev/zero`` in the container, read by an
  independent SPDY client (``tests.support``, what kubectl/crictl speak): the bytes pass
  through conmon's attach socket, the agent and one SPDY stream; the same again over a
  ``v4.channel.k8s.io`` WebSocket (the python client's transport);
* **exec stdin**: ``--mib`` MiB sent in kubectl's 32 KiB pieces to ``wc -c``, over SPDY and
  over a ``v5.channel.k8s.io`` WebSocket (masked client frames the agent must unmask);
* **port-forward**: a TCP source on the pod's loopback sends ``--mib`` MiB; the client reads
  it through ``PortForward`` (one SPDY data stream; the agent dials inside the pod's netns),
  and over a ``v4.channel.k8s.io`` WebSocket;
* **raw loopback** (the reference): the same source process, listening on the host's
  127.0.0.1, read straight from the socket by the same event loop.

Prints the median MB/s of each and its ratio to the reference. The clients are pure Python
too, so every figure includes the client's own cost; compare rows of one run, not runs.

    .venv/bin/python bench/streaming.py --framing [--rounds 5]

measures the agent's side alone, in this process, with no pod and no client (steadier on a
busy machine): ``WebSocket.receive`` of 32 KiB masked client messages, ``WsChannels.send``
of 64 KiB messages, and ``SpdyConnection`` reading 32 KiB and 1 MiB DATA frames into a
stream's reader; the reference is copying the same bytes in 64 KiB pieces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _node import bench_node  # noqa: E402  (bench/ is the script's directory)

from agent.api.cri.runtime.v1 import api_pb2 as pb  # noqa: E402
from agent.ctl.client import CriClient  # noqa: E402
from tests.support.portforward_client import forward_spdy, forward_websocket  # noqa: E402
from tests.support.remotecommand_client import exec_spdy, exec_websocket  # noqa: E402

PARENT = "/ma-bench-streaming"
PORT = 7100
#: A TCP server that sends N bytes to each connection, then closes it.
SOURCE = """
import socket, sys
size = int(sys.argv[2])
chunk = bytes(1 << 20)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[3])))
srv.listen(16)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        left = size
        while left:
            left -= conn.send(chunk[: min(left, len(chunk))])
"""


async def source(size: int, host: str, netns: str = "") -> asyncio.subprocess.Process:
    prefix = ["nsenter", f"--net={netns}", "--"] if netns else []
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-c",
        SOURCE,
        host,
        str(size),
        str(PORT),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert (await proc.stdout.readline()).strip() == b"ready"
    return proc


async def read_count(reader: asyncio.StreamReader) -> int:
    total = 0
    while chunk := await reader.read(1 << 20):
        total += len(chunk)
    return total


async def pieces(size: int) -> AsyncIterator[bytes]:
    """``size`` bytes in kubectl's 32 KiB stdin copies."""
    chunk = bytes(32 * 1024)
    left = size
    while left:
        yield chunk[: min(left, len(chunk))]
        left -= min(left, len(chunk))


PATHS = {
    "exec": "exec stdout, SPDY",
    "exec_ws": "exec stdout, WebSocket",
    "stdin": "exec stdin, SPDY",
    "stdin_ws": "exec stdin, WebSocket",
    "forward": "port-forward, SPDY",
    "forward_ws": "port-forward, WebSocket",
    "raw": "raw loopback",
}


async def run(socket: str, image: str, base: str, size: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in PATHS}
    async with CriClient(socket, timeout=300) as cri:
        rt = cri.runtime
        await cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)))
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="s", uid=uuid.uuid4().hex, namespace="bench"),
            log_directory=f"{base}/logs",
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=PARENT),
        )
        sid = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config))).pod_sandbox_id
        cid = (
            await rt.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=sid,
                    config=pb.ContainerConfig(
                        metadata=pb.ContainerMetadata(name="c"),
                        image=pb.ImageSpec(image=image),
                        command=["sleep", "100000"],
                        log_path="c/0.log",
                    ),
                )
            )
        ).container_id
        await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
        status = await rt.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)
        )
        netns = json.loads(status.info["info"])["netns"]

        async def exec_url(cmd: list[str], stdin: bool = False) -> str:
            request = pb.ExecRequest(container_id=cid, cmd=cmd, stdout=True, stdin=stdin)
            return (await rt.Exec(request)).url

        async def forward_url() -> str:
            request = pb.PortForwardRequest(pod_sandbox_id=sid, port=[PORT])
            return (await rt.PortForward(request)).url

        in_pod = await source(size, "127.0.0.1", netns)
        on_host = await source(size, "127.0.0.1")
        try:
            for _ in range(rounds):
                url = await exec_url(["head", "-c", str(size), "/dev/zero"])
                started = time.perf_counter()
                result = await exec_spdy(url, stderr=False, timeout=600)
                samples["exec"].append(time.perf_counter() - started)
                assert len(result.stdout) == size, len(result.stdout)

                url = await exec_url(["head", "-c", str(size), "/dev/zero"])
                started = time.perf_counter()
                result = await exec_websocket(url, timeout=600)
                samples["exec_ws"].append(time.perf_counter() - started)
                assert len(result.stdout) == size, len(result.stdout)

                url = await exec_url(["wc", "-c"], stdin=True)
                started = time.perf_counter()
                result = await exec_spdy(url, stdin=pieces(size), stderr=False, timeout=600)
                samples["stdin"].append(time.perf_counter() - started)
                assert int(result.stdout) == size, result.stdout

                url = await exec_url(["wc", "-c"], stdin=True)
                started = time.perf_counter()
                result = await exec_websocket(
                    url, subprotocol="v5.channel.k8s.io", stdin=pieces(size), timeout=600
                )
                samples["stdin_ws"].append(time.perf_counter() - started)
                assert int(result.stdout) == size, result.stdout

                async with await forward_spdy(await forward_url(), PORT) as session:
                    started = time.perf_counter()
                    conn = await session.open()
                    await conn.close_write()
                    received = len(await conn.read_all(timeout=600))
                    samples["forward"].append(time.perf_counter() - started)
                assert received == size, received

                started = time.perf_counter()
                async with await forward_websocket(await forward_url(), [PORT]) as forward:
                    received = 0  # the channel has no EOF: read what the source sends
                    while received < size and (chunk := await forward.read(0)):
                        received += len(chunk)
                samples["forward_ws"].append(time.perf_counter() - started)
                assert received == size, received

                started = time.perf_counter()
                reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
                received = await read_count(reader)
                samples["raw"].append(time.perf_counter() - started)
                writer.close()
                assert received == size, received
        finally:
            for proc in (in_pod, on_host):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
            await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    return {name: size / statistics.median(values) / 1e6 for name, values in samples.items()}


# -- the agent's framing alone ---------------------------------------------------------------

FRAMING_SIZE = 64 << 20
REFERENCE = "copying it in 64 KiB pieces"


class _Sink:
    """A writer that takes everything at once: sending costs only the framing."""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _fed_reader(raw: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 16)
    reader.feed_data(raw)
    reader.feed_eof()
    return reader


async def _ws_receive(raw: bytes) -> float:
    from agent.streaming.websocket import WebSocket

    ws = WebSocket(_fed_reader(raw), _Sink(), idle_timeout=60)  # type: ignore[arg-type]
    started = time.perf_counter()
    while await ws.receive() is not None:
        pass
    return time.perf_counter() - started


async def _ws_send() -> float:
    from agent.streaming.channels import WsChannels
    from agent.streaming.websocket import WebSocket

    ws = WebSocket(asyncio.StreamReader(), _Sink(), idle_timeout=60)  # type: ignore[arg-type]
    channels = WsChannels(ws, base64_framing=False, inputs=[])
    chunk = bytes(64 * 1024)
    started = time.perf_counter()
    for _ in range(FRAMING_SIZE // len(chunk)):
        await channels.send(1, chunk)
    return time.perf_counter() - started


async def _spdy_receive(raw: bytes) -> float:
    from agent.streaming.spdy import SpdyConnection

    connection = SpdyConnection(
        _fed_reader(raw),
        _Sink(),  # type: ignore[arg-type]
        server=True,
        accept=lambda stream: True,
    )
    serving = asyncio.ensure_future(connection.serve())
    stream = await connection.incoming.get()
    started = time.perf_counter()
    while await stream.read():
        pass
    elapsed = time.perf_counter() - started
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    return elapsed


def _spdy_wire(frame_size: int) -> bytes:
    from tests.support.spdy_client import (
        FLAG_FIN,
        HeaderCompressor,
        data_frame,
        encode_header_block,
        syn_stream,
    )

    block = HeaderCompressor().compress(encode_header_block({"streamtype": "stdin"}))
    chunk = bytes(frame_size)
    frames = [data_frame(1, chunk) for _ in range(FRAMING_SIZE // frame_size)]
    return b"".join([syn_stream(1, block), *frames, data_frame(1, b"", FLAG_FIN)])


async def framing(rounds: int) -> dict[str, float]:
    from tests.support.remotecommand_client import OP_BINARY, ws_frame

    message = b"\x00" + bytes(32 * 1024 - 1)
    ws_wire = b"".join(ws_frame(OP_BINARY, message) for _ in range(FRAMING_SIZE // len(message)))
    spdy_small, spdy_big = _spdy_wire(32 << 10), _spdy_wire(1 << 20)
    payload = bytes(FRAMING_SIZE)
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, measure in (
            ("WebSocket receive, 32 KiB messages", lambda: _ws_receive(ws_wire)),
            ("WebSocket send, 64 KiB messages", _ws_send),
            ("SPDY receive, 32 KiB frames", lambda: _spdy_receive(spdy_small)),
            ("SPDY receive, 1 MiB frames", lambda: _spdy_receive(spdy_big)),
        ):
            samples.setdefault(name, []).append(await measure())
        view = memoryview(payload)
        started = time.perf_counter()
        for offset in range(0, FRAMING_SIZE, 64 * 1024):
            bytes(view[offset : offset + 64 * 1024])
        samples.setdefault(REFERENCE, []).append(time.perf_counter() - started)
    return {name: FRAMING_SIZE / statistics.median(times) / 1e6 for name, times in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--framing", action="store_true", help="the agent's framing alone")
    args = parser.parse_args()
    if args.framing:
        rates = asyncio.run(framing(args.rounds))
        copy = rates.pop(REFERENCE)
        print(f"{FRAMING_SIZE >> 20} MiB in-process, median of {args.rounds} (MB/s):")
        for name, rate in rates.items():
            print(f"  {name:36s} {rate:8.0f}   {rate / copy:6.3f}x the copy")
        print(f"  {REFERENCE:36s} {copy:8.0f}   (reference)")
        return 0
    with bench_node("10.253.32.0/24", PARENT) as node:
        rates = asyncio.run(run(node.socket, node.image, node.base, args.mib << 20, args.rounds))
    raw = rates["raw"]
    print(f"{args.mib} MiB per transfer, median of {args.rounds} (MB/s):")
    for name, label in PATHS.items():
        if name != "raw":
            print(f"  {label:24s} {rates[name]:8.0f}   {rates[name] / raw:5.2f}x the raw copy")
    print(f"  {PATHS['raw']:24s} {raw:8.0f}   (reference)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
