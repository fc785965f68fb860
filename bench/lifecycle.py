#!/usr/bin/env python3
"""Benchmark: pod and container lifecycle latency, against bare runc as the floor.

    .venv/bin/python bench/lifecycle.py [--iterations 20]

Runs a real ``model-agent serve`` process and times each CRI call of a pod's
life (RunPodSandbox, CreateContainer, StartContainer, StopContainer,
RemoveContainer, StopPodSandbox, RemovePodSandbox) over many iterations;
then, in the same run, the same container started by hand with bare
``runc create`` + ``runc start`` on a prepared bundle (the work no runtime
can avoid). Prints the median of each and the agent's overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _node import bench_node  # noqa: E402  (bench/ is the script's directory)

from agent.api.cri.runtime.v1 import api_pb2 as pb  # noqa: E402
from agent.ctl.client import CriClient  # noqa: E402

STEPS = (
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
)
MASKED = ["/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"]


async def agent_iterations(socket: str, image: str, base: str, n: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    async with CriClient(socket, timeout=120) as cri:
        rt = cri.runtime
        await cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)))

        async def timed(step: str, call):
            started = time.perf_counter()
            result = await call
            times[step].append(time.perf_counter() - started)
            return result

        for i in range(n):
            config = pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(
                    name=f"bench-{i}", uid=uuid.uuid4().hex, namespace="bench"
                ),
                hostname=f"bench-{i}",
                log_directory=f"{base}/logs/{i}",
                linux=pb.LinuxPodSandboxConfig(cgroup_parent="/ma-bench"),
            )
            sid = (
                await timed(
                    "RunPodSandbox", rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config))
                )
            ).pod_sandbox_id
            container = pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="c"),
                image=pb.ImageSpec(image=image),
                command=["sleep", "1000"],
                log_path="c/0.log",
                linux=pb.LinuxContainerConfig(
                    security_context=pb.LinuxContainerSecurityContext(masked_paths=MASKED)
                ),
            )
            cid = (
                await timed(
                    "CreateContainer",
                    rt.CreateContainer(
                        pb.CreateContainerRequest(pod_sandbox_id=sid, config=container)
                    ),
                )
            ).container_id
            await timed(
                "StartContainer", rt.StartContainer(pb.StartContainerRequest(container_id=cid))
            )
            await timed(
                "StopContainer",
                rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10)),
            )
            await timed(
                "RemoveContainer", rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
            )
            await timed(
                "StopPodSandbox", rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
            )
            await timed(
                "RemovePodSandbox",
                rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid)),
            )
    return times


def runc_floor(rootfs_source: str, base: str, n: int) -> list[float]:
    """Bare ``runc create`` + ``runc start`` of the same process on a prepared bundle."""
    bundle = os.path.join(base, "bundle")
    os.makedirs(bundle)
    shutil.copytree(rootfs_source, os.path.join(bundle, "rootfs"), symlinks=True)
    subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        spec = json.load(f)
    spec["process"].update(terminal=False, args=["/bin/sleep", "1000"])
    spec["root"]["readonly"] = False
    root = os.path.join(base, "runc-root")
    results = []
    for i in range(n):
        cid = f"floor-{i}"
        spec["linux"]["cgroupsPath"] = f"/ma-bench/{cid}"
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(spec, f)
        started = time.perf_counter()
        subprocess.run(
            ["runc", "--root", root, "create", "--bundle", bundle, cid],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        subprocess.run(["runc", "--root", root, "start", cid], check=True)
        results.append(time.perf_counter() - started)
        subprocess.run(["runc", "--root", root, "delete", "--force", cid], check=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    with bench_node("10.253.0.0/24", "/ma-bench") as node:
        times = asyncio.run(agent_iterations(node.socket, node.image, node.base, args.iterations))
        snapshots = os.path.join(node.base, "root", "snapshots")
        # busybox has one layer; ".trash" and other dot names are the store's own.
        names = [n for n in os.listdir(snapshots) if not n.startswith(".")]
        layer = os.path.join(snapshots, names[0], "fs")
        floor = runc_floor(layer, node.base, args.iterations)
    medians = {step: statistics.median(values) * 1000 for step, values in times.items()}
    floor_ms = statistics.median(floor) * 1000
    print(f"median of {args.iterations} iterations (milliseconds):")
    for step in STEPS:
        print(f"  {step:20s} {medians[step]:8.1f}")
    start = medians["CreateContainer"] + medians["StartContainer"]
    print(f"  {'runc create+start':20s} {floor_ms:8.1f}   (bare runc on a prepared bundle)")
    print(
        f"  CreateContainer+StartContainer = {start:.1f} ms = {start / floor_ms:.2f}x the floor "
        f"(+{start - floor_ms:.1f} ms)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
