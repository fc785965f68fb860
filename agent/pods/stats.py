"""Resource usage of containers and pods, for the kubelet's stats and eviction.

CPU, memory, swap and process counts come from the cgroups (``cgroups``);
the writable layer's size from walking the container's upper directory (at
most every 10 s per container, off the event loop); a pod's network counters
from ``/proc/<infra pid>/net/dev``, which shows the pod's namespace without
entering it. CPU usage in nano-cores is the rate between this sample and the
previous one of the same object.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass

from agent._util.fs import disk_usage
from agent.network import InterfaceCounters, parse_proc_net_dev
from agent.pods import cgroups
from agent.pods.state import ContainerRecord, ContainerState, SandboxRecord

__all__ = [
    "ContainerUsage",
    "FsUsage",
    "PodUsage",
    "ProcessCounts",
    "StatsCollector",
    "pod_cgroup_path",
]

_FS_TTL = 10.0


@dataclass(frozen=True, slots=True)
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int
    #: the filesystem holding the writable layers (``statvfs``)
    capacity_bytes: int = 0
    inodes_total: int = 0
    inodes_free: int = 0


@dataclass(frozen=True, slots=True)
class ProcessCounts:
    """Open file descriptors and sockets of every process in the container."""

    file_descriptors: int
    sockets: int


@dataclass(frozen=True, slots=True)
class ContainerUsage:
    record: ContainerRecord
    timestamp: int  # ns
    cgroup: cgroups.CgroupReading | None
    nano_cores: int | None
    writable_layer: FsUsage | None
    #: only gathered for metrics (it lists every process's fds)
    processes: ProcessCounts | None = None


@dataclass(frozen=True, slots=True)
class PodUsage:
    record: SandboxRecord
    timestamp: int
    cgroup: cgroups.CgroupReading | None
    nano_cores: int | None
    interfaces: dict[str, InterfaceCounters]
    containers: list[ContainerUsage]


def pod_cgroup_path(parent: str) -> str:
    """The kubelet's pod cgroup as a cgroupfs path (a systemd slice expanded)."""
    if parent.endswith(".slice"):
        stem = os.path.basename(parent).removesuffix(".slice")
        pieces = stem.split("-")
        return "/" + "/".join("-".join(pieces[: i + 1]) + ".slice" for i in range(len(pieces)))
    return parent


class StatsCollector:
    def __init__(self, containers_root: str) -> None:
        self._containers_root = containers_root
        self._last_cpu: dict[str, tuple[int, int]] = {}
        self._fs: dict[str, tuple[float, FsUsage]] = {}

    def _rate(self, key: str, timestamp: int, usage_ns: int) -> int | None:
        previous = self._last_cpu.get(key)
        self._last_cpu[key] = (timestamp, usage_ns)
        if previous is None or timestamp <= previous[0] or usage_ns < previous[1]:
            return None
        return int((usage_ns - previous[1]) * 1_000_000_000 / (timestamp - previous[0]))

    async def _writable_layer(self, container_id: str) -> FsUsage | None:
        upper = os.path.join(self._containers_root, container_id, "upper")
        cached = self._fs.get(container_id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < _FS_TTL:
            return cached[1]
        if not await asyncio.to_thread(os.path.isdir, upper):
            return None
        used, inodes = await asyncio.to_thread(disk_usage, upper)
        fs = await asyncio.to_thread(os.statvfs, self._containers_root)
        usage = FsUsage(
            self._containers_root,
            used,
            inodes,
            capacity_bytes=fs.f_blocks * fs.f_frsize,
            inodes_total=fs.f_files,
            inodes_free=fs.f_ffree,
        )
        self._fs[container_id] = (now, usage)
        return usage

    async def container(
        self, record: ContainerRecord, cgroups_path: str, *, processes: bool = False
    ) -> ContainerUsage:
        now = time.time_ns()
        reading = None
        counts = None
        if record.state is ContainerState.RUNNING:
            reading = cgroups.read_cgroup(cgroups_path, detail=processes)
            if processes:
                pids = cgroups.cgroup_processes(cgroups_path)
                counts = await asyncio.to_thread(_count_descriptors, pids)
        rate = self._rate(record.id, now, reading.cpu_usage_ns) if reading else None
        layer = await self._writable_layer(record.id)
        return ContainerUsage(record, now, reading, rate, layer, counts)

    async def pod(
        self,
        record: SandboxRecord,
        containers: list[tuple[ContainerRecord, str]],
        *,
        processes: bool = False,
    ) -> PodUsage:
        usages = [await self.container(c, path, processes=processes) for c, path in containers]
        now = time.time_ns()
        reading = None
        if record.config.cgroup_parent:
            reading = cgroups.read_cgroup(pod_cgroup_path(record.config.cgroup_parent))
        if reading is None:
            reading = _sum(
                [u.cgroup for u in usages if u.cgroup is not None]
                + [r for r in [cgroups.read_cgroup(record.cgroup_path)] if r]
            )
        rate = self._rate(record.id, now, reading.cpu_usage_ns) if reading else None
        interfaces: dict[str, InterfaceCounters] = {}
        if record.netns and record.infra_pid:
            with contextlib.suppress(OSError):
                text = await asyncio.to_thread(_read, f"/proc/{record.infra_pid}/net/dev")
                interfaces = parse_proc_net_dev(text)
        return PodUsage(record, now, reading, rate, interfaces, usages)

    def forget(self, object_id: str) -> None:
        self._last_cpu.pop(object_id, None)
        self._fs.pop(object_id, None)


def _count_descriptors(pids: list[int]) -> ProcessCounts:
    fds = sockets = 0
    for pid in pids:
        directory = f"/proc/{pid}/fd"
        try:
            names = os.listdir(directory)
        except OSError:
            continue  # it exited meanwhile
        fds += len(names)
        for name in names:
            with contextlib.suppress(OSError):
                if os.readlink(os.path.join(directory, name)).startswith("socket:"):
                    sockets += 1
    return ProcessCounts(fds, sockets)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _sum(readings: list[cgroups.CgroupReading]) -> cgroups.CgroupReading | None:
    if not readings:
        return None
    return cgroups.CgroupReading(
        cpu_usage_ns=sum(r.cpu_usage_ns for r in readings),
        cpu_user_ns=sum(r.cpu_user_ns for r in readings),
        cpu_system_ns=sum(r.cpu_system_ns for r in readings),
        memory_usage=sum(r.memory_usage for r in readings),
        memory_working_set=sum(r.memory_working_set for r in readings),
        memory_rss=sum(r.memory_rss for r in readings),
        memory_cache=sum(r.memory_cache for r in readings),
        page_faults=sum(r.page_faults for r in readings),
        major_page_faults=sum(r.major_page_faults for r in readings),
        oom_events=sum(r.oom_events for r in readings),
        pids=sum(r.pids for r in readings),
    )
