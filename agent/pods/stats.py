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

from agent._util.fs import disk_usage, read_kernel_file
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
    #: the processes (host PIDs) the cgroup held: GPU metrics join NVML's PIDs to these
    pids: tuple[int, ...] = ()


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

    def _layers_due(self, container_ids: list[str]) -> list[str]:
        """The containers whose writable layer was last walked ``_FS_TTL`` ago or more."""
        now = time.monotonic()
        due = []
        for container_id in container_ids:
            cached = self._fs.get(container_id)
            if cached is None or now - cached[0] >= _FS_TTL:
                due.append(container_id)
        return due

    def _walk_layers(self, container_ids: list[str]) -> dict[str, FsUsage | None]:
        """Walk those writable layers (blocking: runs in a thread)."""
        return {c: _layer_usage(self._containers_root, c) for c in container_ids}

    def _keep_layers(self, walked: dict[str, FsUsage | None]) -> None:
        now = time.monotonic()
        for container_id, usage in walked.items():
            if usage is None:
                self._fs.pop(container_id, None)  # no writable layer (any more)
            else:
                self._fs[container_id] = (now, usage)

    async def container(self, record: ContainerRecord, cgroups_path: str) -> ContainerUsage:
        """One container's usage (a handful of small cgroup files, read in place)."""
        now = time.time_ns()
        reading, _ = _read_container(record, cgroups_path, processes=False)
        due = self._layers_due([record.id])
        if due:
            self._keep_layers(await asyncio.to_thread(self._walk_layers, due))
        return self._container_usage(record, now, reading, None)

    def _container_usage(
        self,
        record: ContainerRecord,
        now: int,
        reading: cgroups.CgroupReading | None,
        counts: ProcessCounts | None,
    ) -> ContainerUsage:
        rate = self._rate(record.id, now, reading.cpu_usage_ns) if reading else None
        cached = self._fs.get(record.id)
        layer = cached[1] if cached is not None else None
        return ContainerUsage(record, now, reading, rate, layer, counts)

    async def pods(
        self,
        pods: list[tuple[SandboxRecord, list[tuple[ContainerRecord, str]]]],
        *,
        processes: bool = False,
    ) -> list[PodUsage]:
        """The usage of each (pod, its running containers with their cgroups paths).

        Every file of every pod, and the writable layers due a walk, are read in one
        thread call: a metrics scrape of 100 containers spent more time in the
        hand-offs of a thread call per container (or per pod) than in the reads.
        """
        now = time.time_ns()
        due = self._layers_due([c.id for _, containers in pods for c, _ in containers])

        def read() -> tuple[list[_PodRead], dict[str, FsUsage | None]]:
            reads = [_read_pod(record, containers, processes) for record, containers in pods]
            return reads, self._walk_layers(due)

        reads, walked = await asyncio.to_thread(read)
        self._keep_layers(walked)
        return [
            self._pod_usage(record, containers, pod_read, now)
            for (record, containers), pod_read in zip(pods, reads, strict=True)
        ]

    def _pod_usage(
        self,
        record: SandboxRecord,
        containers: list[tuple[ContainerRecord, str]],
        read: _PodRead,
        now: int,
    ) -> PodUsage:
        usages = [
            self._container_usage(c, now, reading, counts)
            for (c, _), (reading, counts) in zip(containers, read.containers, strict=True)
        ]
        reading = read.cgroup
        if reading is None:
            reading = _sum([u.cgroup for u in usages if u.cgroup is not None] + read.own)
        rate = self._rate(record.id, now, reading.cpu_usage_ns) if reading else None
        interfaces = parse_proc_net_dev(read.net_dev) if read.net_dev else {}
        return PodUsage(record, now, reading, rate, interfaces, usages)

    def forget(self, object_id: str) -> None:
        self._last_cpu.pop(object_id, None)
        self._fs.pop(object_id, None)


def _read_container(
    record: ContainerRecord, cgroups_path: str, processes: bool
) -> tuple[cgroups.CgroupReading | None, ProcessCounts | None]:
    """A running container's cgroup (and, for metrics, its processes' fd counts)."""
    if record.state is not ContainerState.RUNNING:
        return None, None
    reading = cgroups.read_cgroup(cgroups_path, detail=processes)
    counts = _count_descriptors(cgroups.cgroup_processes(cgroups_path)) if processes else None
    return reading, counts


@dataclass(frozen=True, slots=True)
class _PodRead:
    containers: list[tuple[cgroups.CgroupReading | None, ProcessCounts | None]]
    #: the kubelet's pod cgroup (None: no cgroup parent, or it is gone)
    cgroup: cgroups.CgroupReading | None
    #: the sandbox's own cgroup, summed with the containers' when ``cgroup`` is None
    own: list[cgroups.CgroupReading]
    net_dev: str


def _read_pod(
    record: SandboxRecord, containers: list[tuple[ContainerRecord, str]], processes: bool
) -> _PodRead:
    """Everything a pod's usage reads from the kernel (blocking: runs in a thread)."""
    read = [_read_container(c, path, processes) for c, path in containers]
    reading = None
    if record.config.cgroup_parent:
        reading = cgroups.read_cgroup(pod_cgroup_path(record.config.cgroup_parent))
    own = []
    if reading is None:
        own = [r for r in [cgroups.read_cgroup(record.cgroup_path)] if r]
    net_dev = ""
    if record.netns and record.infra_pid:
        with contextlib.suppress(OSError):
            net_dev = read_kernel_file(f"/proc/{record.infra_pid}/net/dev")
    return _PodRead(read, reading, own, net_dev)


def _layer_usage(containers_root: str, container_id: str) -> FsUsage | None:
    """The container's writable layer: its size, and the filesystem holding it."""
    upper = os.path.join(containers_root, container_id, "upper")
    if not os.path.isdir(upper):
        return None
    used, inodes = disk_usage(upper)
    fs = os.statvfs(containers_root)
    return FsUsage(
        containers_root,
        used,
        inodes,
        capacity_bytes=fs.f_blocks * fs.f_frsize,
        inodes_total=fs.f_files,
        inodes_free=fs.f_ffree,
    )


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
    return ProcessCounts(fds, sockets, tuple(pids))


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
