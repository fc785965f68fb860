"""One scrape's worth of GPU facts, read in one thread call: NVML, the assignment record,
the DRA checkpoint, and which container each GPU process belongs to.

``GpuReader.read`` makes every backend call of a scrape in a row (samples, running
processes, per-process utilisation since the previous read, GPM), reads the
holders (``MetadataDB.gpu_holders``) and the DRA driver's prepared devices
(``MetadataDB.dra_devices``), and maps each process's host PID to a container
through ``/proc/<pid>/cgroup``: the driver knows no PID namespaces, and a
container's processes live in its cgroup, ``<cgroup parent>/<container id>``
(cgroupfs) or ``.../model-agent-<container id>.scope`` (systemd), or below it.
It blocks: call it in a thread. ``XidTracker`` keeps the XIDs the driver's event
stream reported. Imports ``gpu`` and ``db``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from agent._util.fs import read_kernel_file
from agent.db import DraPreparedDevice, GpuHolder, MetadataDB
from agent.gpu import (
    GpmSample,
    GpuBackend,
    GpuEvent,
    GpuProcess,
    GpuSample,
    Inventory,
    ProcessUtilization,
)

__all__ = ["GpuReader", "GpuReading", "XidTracker", "container_of_pid"]

log = logging.getLogger(__name__)

#: The first read asks for per-process samples this far back.
_FIRST_WINDOW_US = 1_000_000


@dataclass(frozen=True, slots=True)
class GpuReading:
    inventory: Inventory
    samples: dict[str, GpuSample] = field(default_factory=dict)  # by GPU or MIG UUID
    processes: tuple[GpuProcess, ...] = ()
    #: mean SM utilisation (percent) per (GPU UUID, pid) over the samples since the last read
    utilization: dict[tuple[str, int], float] = field(default_factory=dict)
    gpm: dict[str, GpmSample] = field(default_factory=dict)  # by GPU or MIG UUID
    holders: tuple[GpuHolder, ...] = ()
    dra_by_cdi: dict[str, DraPreparedDevice] = field(default_factory=dict)
    pid_containers: dict[int, str] = field(default_factory=dict)  # pid -> container id
    #: GPUs the health monitor marked unhealthy (XID, ECC, lost): the kubelet sees them so
    unhealthy: frozenset[str] = frozenset()


def container_of_pid(pid: int, known: Collection[str], proc_root: str = "/proc") -> str | None:
    """The container (of ``known``) whose cgroup holds ``pid``; None for other processes."""
    try:
        lines = read_kernel_file(f"{proc_root}/{pid}/cgroup").splitlines()
    except OSError:
        return None  # gone, or not ours to read
    for line in lines:
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            if part.endswith(".scope"):
                part = part.removesuffix(".scope").removeprefix("model-agent-")
            if part in known:
                return part
    return None


class XidTracker:
    """XIDs per GPU from the driver's event stream: the last one, and counts by code."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._counts: dict[tuple[str, int], int] = defaultdict(int)

    def observe(self, events: Iterable[GpuEvent]) -> None:
        with self._lock:
            for event in events:
                if event.kind == "xid" and event.uuid:
                    self._last[event.uuid] = event.xid
                    self._counts[(event.uuid, event.xid)] += 1

    def last(self) -> dict[str, int]:
        with self._lock:
            return dict(self._last)

    def counts(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._counts)


class GpuReader:
    def __init__(self, db: MetadataDB | None, proc_root: str = "/proc") -> None:
        self._db = db
        self._proc_root = proc_root
        self._last_util_us = 0
        self._lock = threading.Lock()

    def read(self, backend: GpuBackend, inventory: Inventory) -> GpuReading:
        """Every NVML call and record one scrape needs (blocking; one call per scrape, in
        a thread); its processes are attributed to containers by :meth:`attribute`."""
        with self._lock:
            now_us = int(time.time() * 1_000_000)
            since = self._last_util_us or now_us - _FIRST_WINDOW_US
            samples = {s.uuid: s for s in backend.samples()}
            processes = tuple(backend.processes())
            utilization = _mean_utilization(backend.process_utilization(since))
            self._last_util_us = now_us
            gpm = {g.uuid: g for g in backend.gpm_samples()}
        holders: tuple[GpuHolder, ...] = ()
        dra: dict[str, DraPreparedDevice] = {}
        if self._db is not None:
            holders = tuple(self._db.gpu_holders())
            dra = {d.cdi_device: d for d in self._db.dra_devices()}
        return GpuReading(
            inventory=inventory,
            samples=samples,
            processes=processes,
            utilization=utilization,
            gpm=gpm,
            holders=holders,
            dra_by_cdi=dra,
        )

    def needs_proc(self, reading: GpuReading, listed: Mapping[int, str]) -> bool:
        """Whether :meth:`attribute` will read ``/proc`` (else it may run on the loop)."""
        return any(p.pid not in listed for p in reading.processes)

    def attribute(
        self,
        reading: GpuReading,
        known_containers: Collection[str],
        listed: Mapping[int, str],
    ) -> GpuReading:
        """``reading`` with each GPU process's container (of ``known_containers``):
        from ``listed``, the PIDs this scrape found in the containers' ``cgroup.procs``,
        else from ``/proc/<pid>/cgroup`` (blocking then: call it in a thread)."""
        known = frozenset(known_containers)
        pids: dict[int, str] = {}
        for pid in {p.pid for p in reading.processes}:
            cid = listed.get(pid)
            if cid is None or cid not in known:
                cid = container_of_pid(pid, known, self._proc_root)
            if cid is not None:
                pids[pid] = cid
        return dataclasses.replace(reading, pid_containers=pids)


def _mean_utilization(samples: Iterable[ProcessUtilization]) -> dict[tuple[str, int], float]:
    sums: dict[tuple[str, int], list[float]] = defaultdict(list)
    for s in samples:
        sums[(s.gpu_uuid, s.pid)].append(s.sm_util)
    return {key: sum(values) / len(values) for key, values in sums.items()}
