#!/usr/bin/env python3
"""Benchmark: what one ``/metrics`` scrape costs with 8 GPUs and 100 containers, against the floor.

    .venv/bin/python bench/metrics.py [--pods 10] [--containers-per-pod 10] [--rounds 20]

Starts a real ``model-agent serve`` on a simulated 8-GPU node (the simulated NVML
backend: every GPU with GPM, a fake driver and real device nodes), runs ``--pods``
pods of ``--containers-per-pod`` busybox containers, each given GPU ``i % 8`` by CDI
name and listed in the simulated process table with its real host PID (memory and
utilisation of its own), then scrapes ``/metrics`` ``--rounds`` times the way
Prometheus does (OpenMetrics, gzip). For each scrape it records the wall time and
the agent process's CPU time (every thread's ``schedstat``).

The floor, in the same run: this process reads the same things directly, with no
metrics model and no exposition — each container's cgroup files (what the cAdvisor
families come from, with the fd counts), each pod's cgroup and ``/proc/<pid>/net/dev``,
the simulated backend's samples, processes, per-process utilisation and GPM through
the same ``SimulatedBackend`` class (a GPU process's container is known from the
``cgroup.procs`` already read, as the agent knows it).
Prints medians, ratios, and whether the targets hold (100 ms a scrape, 2x the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _node import bench_node  # noqa: E402  (bench/ is the script's directory)

from agent._util.fs import read_kernel_file  # noqa: E402
from agent.api.cri.runtime.v1 import api_pb2 as pb  # noqa: E402
from agent.ctl.client import CriClient  # noqa: E402
from agent.gpu.simulated import SimulatedBackend  # noqa: E402
from agent.pods import cgroups  # noqa: E402
from tests.support.fake_driver import install_driver, make_device_nodes  # noqa: E402

PARENT = "/ma-bench-metrics"
GPUS = 8
ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def uuid_of(index: int) -> str:
    return f"GPU-{index:08d}-0000-0000-0000-000000000000"


def simulation(processes: list[tuple[int, int]]) -> str:
    """8 H100s with GPM, and ``(gpu, pid)`` processes with their own readings."""
    text = 'driver_version = "550.54.15"\ncuda_driver_version = "12.4"\n'
    for i in range(GPUS):
        text += f"""
[[gpus]]
uuid = "{uuid_of(i)}"
name = "NVIDIA H100 80GB HBM3"
memory_total_mib = 81559
pci_bus_id = "00000000:{16 + i:02X}:00.0"
gpm_supported = true
[gpus.samples]
gpu_util = [40, 60]
mem_copy_util = 20
memory_used_mib = [20000, 30000]
power_watts = 400
gpu_temp_c = 55
memory_temp_c = 60
sm_clock_mhz = 1980
mem_clock_mhz = 2619
pcie_replay_count = 0
[gpus.gpm]
graphics_engine_active = 50
sm_active = 45
tensor_active = 30
dram_active = 25
pcie_tx_bytes_per_second = 1000000
pcie_rx_bytes_per_second = 2000000
"""
    for n, (gpu, pid) in enumerate(processes):
        text += f"""
[[processes]]
gpu = {gpu}
pid = {pid}
used_memory_mib = {100 + n}
sm_util = {n % 50}
"""
    return text


def prepare(base: str) -> str:
    """The simulated node's files; returns its [gpu] and [metrics] config."""
    node = os.path.join(base, "gpunode")
    os.makedirs(os.path.join(node, "etc-cdi"))
    os.makedirs(os.path.join(node, "run-cdi"))
    driver = install_driver(os.path.join(node, "driver"))
    make_device_nodes(os.path.join(node, "devroot"), list(range(GPUS)))
    with open(os.path.join(node, "sim.toml"), "w") as f:
        f.write(simulation([]))
    return f"""
[metrics]
min_collect_interval_seconds = 0.0
[runtime]
default_cgroup_parent = "{PARENT}"
[gpu]
backend = "simulated"
simulated_file = "{node}/sim.toml"
cdi_spec_dirs = ["{node}/etc-cdi", "{node}/run-cdi"]
node_spec_dir = "{node}/run-cdi"
driver_root = "{driver.root}"
dev_root = "{node}/devroot"
"""


def write_simulation(base: str, processes: list[tuple[int, int]]) -> str:
    path = os.path.join(base, "gpunode", "sim.toml")
    with open(path + ".tmp", "w") as f:
        f.write(simulation(processes))
    os.replace(path + ".tmp", path)
    return path


def agent_cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far, in nanoseconds' resolution
    (``/proc/<pid>/task/*/schedstat``; ``/proc/<pid>/stat`` counts 10 ms ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(read_kernel_file(f"/proc/{pid}/task/{task}/schedstat").split()[0])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def scrape(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": ACCEPT, "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return resp.read()


def floor_once(
    containers: list[tuple[str, str]], pods: list[tuple[str, int]], sim: SimulatedBackend
) -> None:
    """Read what the scrape reads, directly (see the module docstring)."""
    listed: set[int] = set()
    for cid, _ in containers:
        path = f"{PARENT}/{cid}"
        cgroups.read_cgroup(path, detail=True)
        pids = cgroups.cgroup_processes(path)
        listed.update(pids)
        for pid in pids:
            try:
                for name in os.listdir(f"/proc/{pid}/fd"):
                    os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                pass
    for _, infra in pods:
        cgroups.read_cgroup(PARENT)  # the pods' cgroup parent (what pod stats read)
        read_kernel_file(f"/proc/{infra}/net/dev")
    sim.samples()
    processes = sim.processes()
    sim.process_utilization(int(time.time() * 1e6) - 1_000_000)
    sim.gpm_samples()
    # PID -> container: every GPU process here is in a container's cgroup.procs, read above
    assert {p.pid for p in processes} <= listed, "a GPU process outside the containers"


async def run(args: argparse.Namespace, node) -> dict[str, float]:
    async with CriClient(node.socket, timeout=300) as cri:
        rt = cri.runtime
        await cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=node.image)))
        pods: list[tuple[str, int]] = []
        containers: list[tuple[str, str]] = []
        for p in range(args.pods):
            config = pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(
                    name=f"llm-{p}", uid=uuid.uuid4().hex, namespace="bench"
                ),
                log_directory=f"{node.base}/logs/{p}",
                linux=pb.LinuxPodSandboxConfig(cgroup_parent=PARENT),
            )
            sid = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config))).pod_sandbox_id
            status = await rt.PodSandboxStatus(
                pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)
            )
            pods.append((sid, int(json.loads(status.info["info"])["pid"])))
            for c in range(args.containers_per_pod):
                gpu = len(containers) % GPUS
                create = pb.CreateContainerRequest(
                    pod_sandbox_id=sid,
                    config=pb.ContainerConfig(
                        metadata=pb.ContainerMetadata(name=f"worker-{c}"),
                        image=pb.ImageSpec(image=node.image),
                        command=["sleep", "100000"],
                        log_path=f"c{c}/0.log",
                        CDI_devices=[pb.CDIDevice(name=f"nvidia.com/gpu={gpu}")],
                    ),
                )
                cid = (await rt.CreateContainer(create)).container_id
                await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
                containers.append((cid, sid))
        gpu_processes = []
        for n, (cid, _) in enumerate(containers):
            status = await rt.ContainerStatus(
                pb.ContainerStatusRequest(container_id=cid, verbose=True)
            )
            gpu_processes.append((n % GPUS, int(json.loads(status.info["info"])["pid"])))
        sim_path = write_simulation(node.base, gpu_processes)
        sim = SimulatedBackend(sim_path)
        sim.open()
        body = await asyncio.to_thread(scrape, node.metrics_url)  # warm: the 10 s fs caches
        await asyncio.sleep(1)
        samples: dict[str, list[float]] = {"scrape": [], "cpu": [], "floor": [], "floor_cpu": []}
        for _ in range(args.rounds):
            cpu = agent_cpu_seconds(node.agent_pid)
            started = time.perf_counter()
            body = await asyncio.to_thread(scrape, node.metrics_url)
            samples["scrape"].append(time.perf_counter() - started)
            samples["cpu"].append(agent_cpu_seconds(node.agent_pid) - cpu)
            started, cpu = time.perf_counter(), time.process_time()
            floor_once(containers, pods, sim)
            samples["floor"].append(time.perf_counter() - started)
            samples["floor_cpu"].append(time.process_time() - cpu)
            await asyncio.sleep(0.3)
        text = scrape_text(node.metrics_url)
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        per_container = text.count("model_agent_gpu_container_memory_used_bytes{")
        for sid, _ in pods:
            await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
            await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    result = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    result.update(series=series, per_container=per_container, gzip_kib=len(body) / 1024)
    return result


def scrape_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as resp:
        text: str = resp.read().decode()
        return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--containers-per-pod", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with bench_node("10.253.128.0/18", PARENT, prepare=prepare) as node:
        r = asyncio.run(run(args, node))
    total = args.pods * args.containers_per_pod
    print(
        f"{GPUS} simulated GPUs, {total} containers in {args.pods} pods; one scrape: "
        f"{r['series']:.0f} series ({r['per_container']:.0f} per-container GPU series), "
        f"{r['gzip_kib']:.0f} KiB gzipped; median of {args.rounds} (milliseconds):"
    )
    print(f"  scrape (wall)       {r['scrape']:7.1f}   {r['scrape'] / r['floor']:4.1f}x the floor")
    print(
        f"  agent CPU / scrape  {r['cpu']:7.1f}   {r['cpu'] / r['floor_cpu']:4.1f}x the floor's CPU"
    )
    print(f"  floor (wall / CPU)  {r['floor']:7.1f} / {r['floor_cpu']:.1f}")
    ok = r["scrape"] <= 100 and r["scrape"] <= 2 * r["floor"]
    print(f"  target <= 100 ms and <= 2x the floor: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
