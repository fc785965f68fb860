#!/usr/bin/env python3
"""Benchmark: streaming throughput (exec stdout, port-forward) against a raw loopback copy.

    .venv/bin/python bench/streaming.py [--mib 256] [--rounds 5]

Starts a real ``model-agent serve`` with one pod, then, ``--rounds`` times each:

* **exec stdout**: ``Exec`` of ``head -c <mib> /dev/zero`` in the container, read by an
  independent SPDY client (``tests.support``, what kubectl/crictl speak): the bytes pass
  through conmon's attach socket, the agent and one SPDY stream;
* **port-forward**: a TCP source on the pod's loopback sends ``--mib`` MiB; the client reads
  it through ``PortForward`` (one SPDY data stream; the agent dials inside the pod's netns);
* **raw loopback** (the reference): the same source process, listening on the host's
  127.0.0.1, read straight from the socket by the same event loop.

Prints the median MB/s of each and its ratio to the reference.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _node import bench_node  # noqa: E402  (bench/ is the script's directory)

from agent.api.cri.runtime.v1 import api_pb2 as pb  # noqa: E402
from agent.ctl.client import CriClient  # noqa: E402
from tests.support.portforward_client import forward_spdy  # noqa: E402
from tests.support.remotecommand_client import exec_spdy  # noqa: E402

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


async def run(socket: str, image: str, base: str, size: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {"exec": [], "forward": [], "raw": []}
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
        in_pod = await source(size, "127.0.0.1", netns)
        on_host = await source(size, "127.0.0.1")
        try:
            for _ in range(rounds):
                url = (
                    await rt.Exec(
                        pb.ExecRequest(
                            container_id=cid,
                            cmd=["head", "-c", str(size), "/dev/zero"],
                            stdout=True,
                        )
                    )
                ).url
                started = time.perf_counter()
                result = await exec_spdy(url, stderr=False, timeout=600)
                samples["exec"].append(time.perf_counter() - started)
                assert len(result.stdout) == size, len(result.stdout)

                url = (
                    await rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=sid, port=[PORT]))
                ).url
                async with await forward_spdy(url, PORT) as session:
                    started = time.perf_counter()
                    conn = await session.open()
                    await conn.close_write()
                    received = len(await conn.read_all(timeout=600))
                    samples["forward"].append(time.perf_counter() - started)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with bench_node("10.253.32.0/24", PARENT) as node:
        rates = asyncio.run(run(node.socket, node.image, node.base, args.mib << 20, args.rounds))
    raw = rates["raw"]
    print(f"{args.mib} MiB per transfer, median of {args.rounds} (MB/s):")
    for name, label in (("exec", "exec stdout"), ("forward", "port-forward")):
        print(f"  {label:14s} {rates[name]:8.0f}   {rates[name] / raw:5.2f}x the raw copy")
    print(f"  {'raw loopback':14s} {raw:8.0f}   (reference)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
