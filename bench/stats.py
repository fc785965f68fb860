#!/usr/bin/env python3
"""Benchmark: what the kubelet's stats polls cost with 100 pods, against the raw reads.

    .venv/bin/python bench/stats.py [--pods 100] [--rounds 10]

Starts a real ``model-agent serve``, runs ``--pods`` pods of one busybox
container each, then times (median of ``--rounds``) one ``ListContainerStats``,
one ``ListPodSandboxStats`` and one ``ListPodSandboxMetrics`` — what a kubelet
issues every 10 s — and, as the floor, reading the same cgroup files and
``/proc/<pid>/net/dev`` directly in a Python loop. Prints milliseconds per
poll, the share of one core that a 10-second poll interval costs, and the
ratio to the floor.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _node import bench_node  # noqa: E402  (bench/ is the script's directory)

from agent.api.cri.runtime.v1 import api_pb2 as pb  # noqa: E402
from agent.ctl.client import CriClient  # noqa: E402
from agent.pods import cgroups  # noqa: E402

PARENT = "/ma-bench-stats"


async def run(socket: str, image: str, base: str, pods: int, rounds: int) -> dict[str, float]:
    async with CriClient(socket, timeout=300) as cri:
        rt = cri.runtime
        await cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)))
        sandboxes: list[str] = []
        containers: list[str] = []
        for i in range(pods):
            config = pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(
                    name=f"s{i}", uid=uuid.uuid4().hex, namespace="bench"
                ),
                log_directory=f"{base}/logs/{i}",
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
            sandboxes.append(sid)
            containers.append(cid)
        samples: dict[str, list[float]] = {"containers": [], "pods": [], "metrics": [], "floor": []}
        infra_pids = []
        for sid in sandboxes:
            status = await rt.PodSandboxStatus(
                pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)
            )
            infra_pids.append(int(json.loads(status.info["info"])["pid"]))
        for _ in range(rounds):
            started = time.perf_counter()
            listed = await rt.ListContainerStats(pb.ListContainerStatsRequest())
            samples["containers"].append(time.perf_counter() - started)
            assert len(listed.stats) == pods
            started = time.perf_counter()
            await rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest())
            samples["pods"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())
            samples["metrics"].append(time.perf_counter() - started)
            started = time.perf_counter()
            for cid, pid in zip(containers, infra_pids, strict=True):
                cgroups.read_cgroup(f"{PARENT}/{cid}")
                with open(f"/proc/{pid}/net/dev") as f:  # noqa: ASYNC230  (the floor: plain reads)
                    f.read()
            samples["floor"].append(time.perf_counter() - started)
            await asyncio.sleep(0.5)
        for sid in sandboxes:
            await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
            await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    return {name: statistics.median(values) * 1000 for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with bench_node("10.253.64.0/18", PARENT) as node:
        medians = asyncio.run(run(node.socket, node.image, node.base, args.pods, args.rounds))
    floor = medians["floor"]
    print(f"{args.pods} pods, median of {args.rounds} polls (milliseconds):")
    for name, label in (
        ("containers", "ListContainerStats"),
        ("pods", "ListPodSandboxStats"),
        ("metrics", "ListPodSandboxMetrics"),
    ):
        value = medians[name]
        print(
            f"  {label:22s} {value:8.1f}   {value / 100:5.2f}% of a core per 10 s poll   "
            f"{value / floor:5.1f}x the raw reads"
        )
    print(f"  {'raw cgroup + net reads':22s} {floor:8.1f}   (floor)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
