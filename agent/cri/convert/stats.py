"""Stats and CRI metrics: cgroup readings out as ContainerStats, PodSandboxStats, metrics."""

from __future__ import annotations

from collections.abc import Iterable

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.convert.containers import container_metadata_to_pb
from agent.cri.convert.sandboxes import sandbox_metadata_to_pb
from agent.metrics import cadvisor
from agent.pods import ContainerUsage, PodUsage

__all__ = ["container_stats_to_pb", "descriptors_to_pb", "pod_metrics_to_pb", "pod_stats_to_pb"]


def u64(value: float) -> pb.UInt64Value:
    return pb.UInt64Value(value=max(0, int(value)))


def container_stats_to_pb(usage: ContainerUsage) -> pb.ContainerStats:
    record = usage.record
    stats = pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=record.id,
            metadata=container_metadata_to_pb(record),
            labels=record.config.labels,
            annotations=record.config.annotations,
        )
    )
    reading = usage.cgroup
    if reading is not None:
        stats.cpu.CopyFrom(
            pb.CpuUsage(
                timestamp=usage.timestamp, usage_core_nano_seconds=u64(reading.cpu_usage_ns)
            )
        )
        if usage.nano_cores is not None:
            stats.cpu.usage_nano_cores.CopyFrom(u64(usage.nano_cores))
        memory = pb.MemoryUsage(
            timestamp=usage.timestamp,
            working_set_bytes=u64(reading.memory_working_set),
            usage_bytes=u64(reading.memory_usage),
            rss_bytes=u64(reading.memory_rss),
            page_faults=u64(reading.page_faults),
            major_page_faults=u64(reading.major_page_faults),
        )
        if reading.memory_limit:
            memory.available_bytes.CopyFrom(u64(reading.memory_limit - reading.memory_working_set))
        stats.memory.CopyFrom(memory)
        if reading.swap_usage is not None:
            stats.swap.CopyFrom(
                pb.SwapUsage(timestamp=usage.timestamp, swap_usage_bytes=u64(reading.swap_usage))
            )
    if usage.writable_layer is not None:
        stats.writable_layer.CopyFrom(
            pb.FilesystemUsage(
                timestamp=usage.timestamp,
                fs_id=pb.FilesystemIdentifier(mountpoint=usage.writable_layer.mountpoint),
                used_bytes=u64(usage.writable_layer.used_bytes),
                inodes_used=u64(usage.writable_layer.inodes_used),
            )
        )
    return stats


def pod_stats_to_pb(usage: PodUsage) -> pb.PodSandboxStats:
    record = usage.record
    linux = pb.LinuxPodSandboxStats(containers=[container_stats_to_pb(c) for c in usage.containers])
    reading = usage.cgroup
    if reading is not None:
        linux.cpu.CopyFrom(
            pb.CpuUsage(
                timestamp=usage.timestamp, usage_core_nano_seconds=u64(reading.cpu_usage_ns)
            )
        )
        if usage.nano_cores is not None:
            linux.cpu.usage_nano_cores.CopyFrom(u64(usage.nano_cores))
        linux.memory.CopyFrom(
            pb.MemoryUsage(
                timestamp=usage.timestamp,
                working_set_bytes=u64(reading.memory_working_set),
                usage_bytes=u64(reading.memory_usage),
                rss_bytes=u64(reading.memory_rss),
                page_faults=u64(reading.page_faults),
                major_page_faults=u64(reading.major_page_faults),
            )
        )
        linux.process.CopyFrom(
            pb.ProcessUsage(timestamp=usage.timestamp, process_count=u64(reading.pids))
        )
    if usage.interfaces:
        interfaces = [
            pb.NetworkInterfaceUsage(
                name=c.name,
                rx_bytes=u64(c.rx_bytes),
                rx_errors=u64(c.rx_errors),
                tx_bytes=u64(c.tx_bytes),
                tx_errors=u64(c.tx_errors),
            )
            for c in usage.interfaces.values()
        ]
        default = next((i for i in interfaces if i.name == "eth0"), interfaces[0])
        linux.network.CopyFrom(
            pb.NetworkUsage(
                timestamp=usage.timestamp, default_interface=default, interfaces=interfaces
            )
        )
    return pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(
            id=record.id,
            metadata=sandbox_metadata_to_pb(record),
            labels=record.config.labels,
            annotations=record.config.annotations,
        ),
        linux=linux,
    )


def descriptors_to_pb(descriptors: Iterable[cadvisor.Descriptor]) -> list[pb.MetricDescriptor]:
    return [
        pb.MetricDescriptor(name=d.name, help=d.help, label_keys=list(d.labels))
        for d in descriptors
    ]


def _metric(sample: cadvisor.MetricSample) -> pb.Metric:
    return pb.Metric(
        name=sample.name,
        timestamp=sample.timestamp,
        metric_type=pb.COUNTER if sample.counter else pb.GAUGE,
        label_values=list(sample.label_values),
        value=u64(sample.value),
    )


def pod_metrics_to_pb(usage: PodUsage) -> pb.PodSandboxMetrics:
    pod_level, per_container = cadvisor.pod_samples(usage)
    return pb.PodSandboxMetrics(
        pod_sandbox_id=usage.record.id,
        metrics=[_metric(s) for s in pod_level],
        container_metrics=[
            pb.ContainerMetrics(container_id=cid, metrics=[_metric(s) for s in samples])
            for cid, samples in per_container.items()
        ],
    )
