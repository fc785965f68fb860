"""Container and pod metrics under the cAdvisor names dashboards already query.

Served through the CRI's ``ListMetricDescriptors`` / ``ListPodSandboxMetrics``
(the kubelet re-exports them on ``/metrics/cadvisor``) and on the agent's own
``/metrics`` (``containers``). Samples carry exact values (seconds as fractions);
CRI metric values are unsigned integers, so the CRI conversion truncates
"seconds" counters to whole seconds, as CRI-O sends them. Labels follow
cAdvisor: ``container``, ``id``, ``image``, ``name``, ``namespace``, ``pod`` (and
``interface`` for network metrics); pod-level metrics (network) carry an empty
``container``. Imports only ``pods`` types (never ``cri``: the CRI conversion imports this).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from agent.pods import CgroupReading, ContainerUsage, PodUsage

__all__ = [
    "BASE_LABELS",
    "DESCRIPTORS",
    "Descriptor",
    "MetricSample",
    "Value",
    "pod_samples",
    "pod_values",
]

BASE_LABELS = ("container", "id", "image", "name", "namespace", "pod")
NETWORK_LABELS = (*BASE_LABELS, "interface")


@dataclass(frozen=True, slots=True)
class Descriptor:
    name: str
    help: str
    counter: bool
    labels: tuple[str, ...] = BASE_LABELS


#: (descriptor, label values, value): a sample before it is named, typed and timestamped;
#: the agent's ``/metrics`` renders thousands of these a scrape, the CRI wraps them.
Value = tuple[Descriptor, tuple[str, ...], float]


class MetricSample(NamedTuple):
    """One sample (a tuple: thousands are made per scrape, and a tuple is made fastest)."""

    name: str
    counter: bool
    label_values: tuple[str, ...]
    value: float
    timestamp: int  # ns


_CPU: list[tuple[Descriptor, Callable[[CgroupReading], float]]] = [
    (
        Descriptor(
            "container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", True
        ),
        lambda r: r.cpu_usage_ns / 1e9,
    ),
    (
        Descriptor(
            "container_cpu_user_seconds_total",
            "Cumulative user CPU time consumed in seconds.",
            True,
        ),
        lambda r: r.cpu_user_ns / 1e9,
    ),
    (
        Descriptor(
            "container_cpu_system_seconds_total",
            "Cumulative system CPU time consumed in seconds.",
            True,
        ),
        lambda r: r.cpu_system_ns / 1e9,
    ),
    (
        Descriptor(
            "container_cpu_cfs_periods_total",
            "Number of elapsed enforcement period intervals.",
            True,
        ),
        lambda r: r.periods,
    ),
    (
        Descriptor(
            "container_cpu_cfs_throttled_periods_total",
            "Number of throttled period intervals.",
            True,
        ),
        lambda r: r.throttled_periods,
    ),
    (
        Descriptor(
            "container_cpu_cfs_throttled_seconds_total",
            "Total time duration the container has been throttled.",
            True,
        ),
        lambda r: r.throttled_ns / 1e9,
    ),
    (
        Descriptor(
            "container_memory_usage_bytes",
            "Current memory usage in bytes, including all memory regardless of when it was "
            "accessed.",
            False,
        ),
        lambda r: r.memory_usage,
    ),
    (
        Descriptor("container_memory_working_set_bytes", "Current working set in bytes.", False),
        lambda r: r.memory_working_set,
    ),
    (Descriptor("container_memory_rss", "Size of RSS in bytes.", False), lambda r: r.memory_rss),
    (
        Descriptor("container_memory_cache", "Number of bytes of page cache memory.", False),
        lambda r: r.memory_cache,
    ),
    (
        Descriptor("container_memory_swap", "Container swap usage in bytes.", False),
        lambda r: r.swap_usage or 0,
    ),
    (
        Descriptor(
            "container_spec_memory_limit_bytes", "Memory limit for the container in bytes.", False
        ),
        lambda r: r.memory_limit,
    ),
    (
        Descriptor(
            "container_oom_events_total",
            "Count of out of memory events observed for the container.",
            True,
        ),
        lambda r: r.oom_events,
    ),
    (
        Descriptor(
            "container_processes", "Number of processes running inside the container.", False
        ),
        lambda r: r.pids,
    ),
    (
        Descriptor("container_threads", "Number of threads running inside the container.", False),
        lambda r: r.pids,  # the pids controller counts tasks, i.e. threads
    ),
    (
        Descriptor(
            "container_threads_max",
            "Maximum number of threads allowed inside the container, 0 if unlimited.",
            False,
        ),
        lambda r: r.threads_max,
    ),
    (
        Descriptor("container_memory_failcnt", "Number of memory usage hits limits.", True),
        lambda r: r.memory_failcnt,
    ),
    (
        Descriptor(
            "container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", False
        ),
        lambda r: r.memory_kernel,
    ),
    (
        Descriptor("container_memory_mapped_file", "Size of memory mapped files in bytes.", False),
        lambda r: r.memory_mapped_file,
    ),
    (
        Descriptor(
            "container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.", False
        ),
        lambda r: r.memory_max_usage,
    ),
    (
        Descriptor(
            "container_spec_memory_swap_limit_bytes",
            "Memory swap limit for the container in bytes.",
            False,
        ),
        lambda r: r.memory_swap_limit,
    ),
    (
        Descriptor("container_spec_cpu_period", "CPU period of the container.", False),
        lambda r: r.cpu_period,
    ),
    (
        Descriptor("container_spec_cpu_quota", "CPU quota of the container.", False),
        lambda r: r.cpu_quota,
    ),
    (
        Descriptor("container_spec_cpu_shares", "CPU share of the container.", False),
        lambda r: r.cpu_shares,
    ),
]
FAILURE_LABELS = (*BASE_LABELS, "failure_type", "scope")
_MEMORY_FAILURES = Descriptor(
    "container_memory_failures_total",
    "Cumulative count of memory allocation failures.",
    True,
    FAILURE_LABELS,
)
DEVICE_LABELS = (*BASE_LABELS, "device")
BLKIO_LABELS = (*BASE_LABELS, "device", "major", "minor", "operation")
_BLKIO = Descriptor(
    "container_blkio_device_usage_total", "Blkio device bytes usage.", True, BLKIO_LABELS
)
#: (descriptor, block-io operation, index into (bytes, ios))
_FS_IO: list[tuple[Descriptor, str, int]] = [
    (
        Descriptor(
            f"container_fs_{what}_total", f"Cumulative count of {text}.", True, DEVICE_LABELS
        ),
        operation,
        index,
    )
    for what, text, operation, index in (
        ("reads_bytes", "bytes read", "Read", 0),
        ("reads", "reads completed", "Read", 1),
        ("writes_bytes", "bytes written", "Write", 0),
        ("writes", "writes completed", "Write", 1),
    )
]
_FS_SPACE: list[tuple[Descriptor, str]] = [
    (
        Descriptor(
            "container_fs_limit_bytes",
            "Number of bytes that can be consumed by the container on this filesystem.",
            False,
            DEVICE_LABELS,
        ),
        "capacity_bytes",
    ),
    (
        Descriptor(
            "container_fs_inodes_total",
            "Number of Inodes on the filesystem of the writable layer.",
            False,
            DEVICE_LABELS,
        ),
        "inodes_total",
    ),
    (
        Descriptor(
            "container_fs_inodes_free",
            "Number of available Inodes on the filesystem of the writable layer.",
            False,
            DEVICE_LABELS,
        ),
        "inodes_free",
    ),
]
_FDS = Descriptor(
    "container_file_descriptors", "Number of open file descriptors for the container.", False
)
_SOCKETS = Descriptor("container_sockets", "Number of open sockets for the container.", False)
_LAST_SEEN = Descriptor(
    "container_last_seen", "Last time a container was seen by the exporter.", False
)
_FS = Descriptor(
    "container_fs_usage_bytes", "Current filesystem usage in bytes.", False, DEVICE_LABELS
)
_FS_INODES = Descriptor(
    "container_fs_inodes_used", "Inodes used by the writable layer.", False, DEVICE_LABELS
)
_START = Descriptor(
    "container_start_time_seconds",
    "Start time of the container since unix epoch in seconds.",
    False,
)
_NETWORK: list[tuple[Descriptor, str]] = [
    (
        Descriptor(f"container_network_{direction}_{what}_total", help_text, True, NETWORK_LABELS),
        attribute,
    )
    for direction, prefix, past, gerund in (
        ("receive", "rx", "received", "receiving"),
        ("transmit", "tx", "transmitted", "transmitting"),
    )
    for what, attribute, help_text in (
        ("bytes", f"{prefix}_bytes", f"Cumulative count of bytes {past}"),
        ("packets", f"{prefix}_packets", f"Cumulative count of packets {past}"),
        ("errors", f"{prefix}_errors", f"Cumulative count of errors encountered while {gerund}"),
        (
            "packets_dropped",
            f"{prefix}_dropped",
            f"Cumulative count of packets dropped while {gerund}",
        ),
    )
]

DESCRIPTORS: tuple[Descriptor, ...] = (
    *(d for d, _ in _CPU),
    _MEMORY_FAILURES,
    _BLKIO,
    *(d for d, _, _ in _FS_IO),
    _FS,
    _FS_INODES,
    *(d for d, _ in _FS_SPACE),
    _FDS,
    _SOCKETS,
    _START,
    _LAST_SEEN,
    *(d for d, _ in _NETWORK),
)


def _container_values(usage: ContainerUsage, pod: PodUsage) -> list[Value]:
    record = usage.record
    meta = pod.record.config.metadata
    labels = (
        record.config.name,
        record.id,
        record.display_image,
        record.id,
        meta.namespace,
        meta.name,
    )
    values: list[Value] = [(_LAST_SEEN, labels, usage.timestamp / 1e9)]
    reading = usage.cgroup
    if reading is not None:
        values += [(d, labels, get(reading)) for d, get in _CPU]
        for kind, count in (
            ("pgfault", reading.page_faults),
            ("pgmajfault", reading.major_page_faults),
        ):
            for scope in ("container", "hierarchy"):
                values.append((_MEMORY_FAILURES, (*labels, kind, scope), count))
        for major, minor, operation, size, ios in reading.block_io:
            device = _device_name(major, minor)
            if operation in ("Read", "Write", "Sync", "Async", "Discard", "Total"):
                values.append((_BLKIO, (*labels, device, str(major), str(minor), operation), size))
            for d, wanted, index in _FS_IO:
                if operation == wanted:
                    values.append((d, (*labels, device), (size, ios)[index]))
    layer = usage.writable_layer
    if layer is not None:
        values.append((_FS, (*labels, layer.mountpoint), layer.used_bytes))
        values.append((_FS_INODES, (*labels, layer.mountpoint), layer.inodes_used))
        values += [(d, (*labels, layer.mountpoint), getattr(layer, attr)) for d, attr in _FS_SPACE]
    if usage.processes is not None:
        values.append((_FDS, labels, usage.processes.file_descriptors))
        values.append((_SOCKETS, labels, usage.processes.sockets))
    if record.started_at:
        values.append((_START, labels, record.started_at / 1e9))
    return values


@functools.lru_cache(maxsize=256)
def _device_name(major: int, minor: int) -> str:
    """``/dev/<name>`` for a block device number, as cAdvisor labels it (or ``major:minor``)."""
    try:
        target = os.readlink(f"/sys/dev/block/{major}:{minor}")
    except OSError:
        return f"{major}:{minor}"
    return "/dev/" + os.path.basename(target)


def pod_values(pod: PodUsage) -> tuple[list[Value], dict[str, list[Value]]]:
    """The pod's own metrics, and each running container's, as values.

    The pod's are its network and, as cAdvisor reports a pod's cgroup (``container=""``),
    its CPU and memory: what dashboards read per pod without adding up containers.
    """
    meta = pod.record.config.metadata
    base = ("", pod.record.id, "", pod.record.id, meta.namespace, meta.name)
    pod_level: list[Value] = [
        (d, (*base, counters.name), getattr(counters, attr))
        for counters in pod.interfaces.values()
        for d, attr in _NETWORK
    ]
    if pod.cgroup is not None:
        pod_level += [(d, base, get(pod.cgroup)) for d, get in _CPU]
    return pod_level, {u.record.id: _container_values(u, pod) for u in pod.containers}


def pod_samples(pod: PodUsage) -> tuple[list[MetricSample], dict[str, list[MetricSample]]]:
    """``pod_values`` as samples, timestamped when each object was read (for the CRI)."""
    pod_level, per_container = pod_values(pod)
    read_at = {u.record.id: u.timestamp for u in pod.containers}
    return [
        MetricSample(d.name, d.counter, labels, v, pod.timestamp) for d, labels, v in pod_level
    ], {
        cid: [MetricSample(d.name, d.counter, labels, v, read_at[cid]) for d, labels, v in values]
        for cid, values in per_container.items()
    }
