#!/usr/bin/env python3
"""Benchmark: what each status and list RPC costs over the null call, with 50 running pods.

    .venv/bin/python bench/rpc_cost.py [--pods 50] [--calls 200] [--clients 8]

Starts a real ``model-agent serve``, runs ``--pods`` pods of one busybox container
each, then times ``--calls`` sequential calls of each RPC a kubelet polls: the floor
is ``Version`` (a null call through the same socket, gRPC stack and interceptor).
Then ``--clients`` concurrent lifecycle clients (create, start, stop, remove a
container in a loop, in a process of their own) run while ``ContainerStatus`` is
timed again. Prints the
median and p99 in milliseconds and each RPC's overhead over the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _node import bench_node  # noqa: E402  (bench/ is the script's directory)

from agent.api.cri.runtime.v1 import api_pb2 as pb  # noqa: E402
from agent.ctl.client import CriClient  # noqa: E402

PARENT = "/ma-bench-rpc"


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000


async def timed(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def container_config(image: str, name: str, base: str) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        command=["sleep", "100000"],
        log_path=f"{name}/0.log",
    )


async def run(node, pods: int, calls: int, clients: int) -> dict[str, tuple[float, float]]:
    async with CriClient(node.socket, timeout=300) as cri:
        rt, ic = cri.runtime, cri.images
        await ic.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=node.image)))
        sandboxes, containers = [], []
        for i in range(pods):
            config = pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(name=f"p{i}", uid=uuid.uuid4().hex, namespace="b"),
                log_directory=f"{node.base}/logs/{i}",
                linux=pb.LinuxPodSandboxConfig(cgroup_parent=PARENT),
            )
            sid = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config))).pod_sandbox_id
            request = pb.CreateContainerRequest(
                pod_sandbox_id=sid, config=container_config(node.image, "c", node.base)
            )
            cid = (await rt.CreateContainer(request)).container_id
            await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
            sandboxes.append(sid)
            containers.append(cid)
        image = pb.ImageSpec(image=node.image)
        rpcs: dict[str, Callable[[], Awaitable[object]]] = {
            "Version (floor)": lambda: rt.Version(pb.VersionRequest()),
            "ListContainers": lambda: rt.ListContainers(pb.ListContainersRequest()),
            "ListPodSandbox": lambda: rt.ListPodSandbox(pb.ListPodSandboxRequest()),
            "ContainerStatus": lambda: rt.ContainerStatus(
                pb.ContainerStatusRequest(container_id=containers[0])
            ),
            "PodSandboxStatus": lambda: rt.PodSandboxStatus(
                pb.PodSandboxStatusRequest(pod_sandbox_id=sandboxes[0])
            ),
            "ImageStatus": lambda: ic.ImageStatus(pb.ImageStatusRequest(image=image)),
            "ListImages": lambda: ic.ListImages(pb.ListImagesRequest()),
        }
        results = {}
        for name, call in rpcs.items():
            await timed(call, 20)  # warm up
            results[name] = quantiles(await timed(call, calls))

        # The lifecycle clients run in a process of their own, as a kubelet's pod workers
        # are not the status poller's event loop: only the agent is shared.
        churner = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--churn", node.socket, node.image, node.base,
            *sandboxes[:clients],
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert churner.stdout is not None
        assert churner.stdin is not None
        if await churner.stdout.readline() != b"churning\n":  # every client under way
            raise RuntimeError(f"the lifecycle clients did not start ({await churner.wait()})")
        await asyncio.sleep(1)
        status = rpcs["ContainerStatus"]
        results[f"ContainerStatus, {clients} lifecycle clients"] = quantiles(
            await timed(status, calls)
        )
        churner.stdin.close()  # the clients finish their rounds and report
        report = await churner.stdout.read()
        if await churner.wait() != 0:
            raise RuntimeError("the lifecycle clients failed")
        lifecycle = json.loads(report)
        results["create+start+stop+remove (each client)"] = quantiles(lifecycle)
        for sid in sandboxes:
            await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
            await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    return results


async def churn(socket: str, image: str, base: str, sandboxes: list[str]) -> list[float]:
    """One lifecycle client per pod in ``sandboxes`` (create, start, stop, remove a
    container in a loop) until stdin closes; each round's seconds."""
    lifecycle: list[float] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with CriClient(socket, timeout=300) as cri:
        rt = cri.runtime

        async def client(k: int, sid: str) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                config = container_config(image, f"churn-{k}-{n}", base)
                started = time.perf_counter()
                request = pb.CreateContainerRequest(pod_sandbox_id=sid, config=config)
                cid = (await rt.CreateContainer(request)).container_id
                await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
                await rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
                await rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
                lifecycle.append(time.perf_counter() - started)

        tasks = [asyncio.ensure_future(client(k, sid)) for k, sid in enumerate(sandboxes)]
        print("churning", flush=True)
        await reader.read()  # EOF: the timing is done
        stop.set()
        await asyncio.gather(*tasks)
    return lifecycle


def main() -> int:
    if sys.argv[1:2] == ["--churn"]:
        socket, image, base, *sandboxes = sys.argv[2:]
        print(json.dumps(asyncio.run(churn(socket, image, base, sandboxes))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    if args.clients > args.pods:
        parser.error("--clients needs as many --pods (one lifecycle client per pod)")
    with bench_node("10.253.128.0/18", PARENT) as node:
        results = asyncio.run(run(node, args.pods, args.calls, args.clients))
    floor = results["Version (floor)"][0]
    print(f"{args.pods} running pods, {args.calls} calls each (milliseconds):")
    print(f"  {'RPC':48s} {'median':>8s} {'p99':>8s} {'over the floor':>15s}")
    for name, (median, p99) in results.items():
        print(f"  {name:48s} {median:8.2f} {p99:8.2f} {median - floor:+14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
