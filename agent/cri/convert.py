"""Pure conversions between CRI protobuf messages and domain values.

``<thing>_from_pb`` and ``<thing>_to_pb``; nothing here does I/O. Presence
of required sub-messages is checked with ``HasField`` (protobuf would
otherwise hand us silent defaults) and reported as ``INVALID_ARGUMENT``
naming the field.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any

from google.protobuf.message import Message

from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.errors import InvalidArgument, Unimplemented
from agent.images.auth import Credentials
from agent.images.service import FsUsage
from agent.images.store import ImageRecord
from agent.metrics.cadvisor import Descriptor, MetricSample, pod_samples
from agent.pods import model
from agent.pods.events import ContainerEvent
from agent.pods.state import ContainerRecord, ContainerState, SandboxRecord, SandboxState
from agent.pods.stats import ContainerUsage, PodUsage

__all__ = [
    "credentials_from_pb",
    "fs_usage_to_pb",
    "image_to_pb",
    "image_verbose_info",
    "require",
    "require_image",
]


def require(message: Message, *fields: str) -> None:
    """Fail with INVALID_ARGUMENT unless each sub-message field is set."""
    for name in fields:
        if not message.HasField(name):
            raise InvalidArgument(f"{name} is required")


def require_image(message: Message, field: str = "image", *, label: str = "") -> str:
    """The non-empty ``<field>.image`` string of a message carrying an ImageSpec."""
    label = label or field
    if not message.HasField(field):
        raise InvalidArgument(f"{label} is required")
    value: str = getattr(message, field).image
    if not value:
        raise InvalidArgument(f"{label}.image is required")
    return value


def credentials_from_pb(message: pb.PullImageRequest) -> Credentials | None:
    if not message.HasField("auth"):
        return None
    auth = message.auth
    return Credentials.from_cri(
        username=auth.username,
        password=auth.password,
        auth=auth.auth,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )


def _user(user: str) -> tuple[int | None, str]:
    """``(uid, username)`` of an image config ``User`` ("1000", "app", "app:grp", "0:0")."""
    name = user.split(":", 1)[0]
    if not name:
        return None, ""
    if name.isdigit():
        return int(name), ""
    return None, name


def image_to_pb(image: ImageRecord, *, pinned: bool) -> pb.Image:
    uid, username = _user(image.config.user)
    result = pb.Image(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        size=image.size_bytes,
        username=username,
        spec=pb.ImageSpec(image=image.id),
        pinned=pinned,
    )
    if uid is not None:
        result.uid.value = uid
    return result


def image_verbose_info(image: ImageRecord) -> dict[str, str]:
    info: dict[str, Any] = {
        "id": image.id,
        "manifestDigest": image.manifest_digest,
        "manifestMediaType": image.manifest_media_type,
        "chainIds": list(image.layers),
        "imageConfig": json.loads(image.config_json),
    }
    return {"info": json.dumps(info, sort_keys=True)}


def fs_usage_to_pb(usage: FsUsage) -> pb.FilesystemUsage:
    return pb.FilesystemUsage(
        timestamp=usage.timestamp_ns,
        fs_id=pb.FilesystemIdentifier(mountpoint=usage.mountpoint),
        used_bytes=pb.UInt64Value(value=usage.used_bytes),
        inodes_used=pb.UInt64Value(value=usage.inodes_used),
    )


# ---------------------------------------------------------------------------
# Pods and containers: requests -> domain


def _enum_name(enum: Any, value: int, field: str) -> str:
    """The enum value's name; an unknown number (a newer client) is INVALID_ARGUMENT."""
    try:
        return str(enum.Name(value))
    except ValueError:
        raise InvalidArgument(f"{field}: unknown value {value}") from None


def _absolute(path: str, field: str, *, required: bool = True) -> str:
    if not path:
        if required:
            raise InvalidArgument(f"{field} is required")
        return path
    if not path.startswith("/"):
        raise InvalidArgument(f"{field}: '{path}' is not an absolute path")
    if "\x00" in path:
        raise InvalidArgument(f"{field}: contains a NUL byte")
    return path


def _namespaces(message: pb.NamespaceOption, field: str) -> model.NamespaceOptions:
    modes = {}
    for name in ("network", "pid", "ipc"):
        modes[name] = _enum_name(pb.NamespaceMode, getattr(message, name), f"{field}.{name}")
    if modes["network"] not in ("POD", "NODE"):
        raise InvalidArgument(f"{field}.network: {modes['network']} is not supported")
    if modes["ipc"] not in ("POD", "NODE"):
        raise InvalidArgument(f"{field}.ipc: {modes['ipc']} is not supported")
    if modes["pid"] == "TARGET" and not message.target_id:
        raise InvalidArgument(f"{field}.target_id is required with pid TARGET")
    if message.HasField("userns_options"):
        userns = message.userns_options
        if userns.mode in (pb.CONTAINER, pb.TARGET) or (
            userns.mode == pb.POD and (userns.uids or userns.gids)
        ):
            raise InvalidArgument(f"{field}.userns_options: user namespaces are not supported")
    return model.NamespaceOptions(modes["network"], modes["pid"], modes["ipc"], message.target_id)


def _profile(message: pb.SecurityProfile, field: str) -> model.SecurityProfile:
    kind = _enum_name(pb.SecurityProfile.ProfileType, message.profile_type, f"{field}.profile_type")
    if kind == "Localhost":
        _absolute(message.localhost_ref, f"{field}.localhost_ref")
    return model.SecurityProfile(kind, message.localhost_ref)


def _seccomp(
    message: pb.LinuxSandboxSecurityContext | pb.LinuxContainerSecurityContext, field: str
) -> model.SecurityProfile:
    """``seccomp`` wins; the deprecated ``seccomp_profile_path`` is read when it is absent."""
    if message.HasField("seccomp"):
        return _profile(message.seccomp, f"{field}.seccomp")
    legacy: str = message.seccomp_profile_path
    if legacy in ("runtime/default", "docker/default"):
        return model.SecurityProfile("RuntimeDefault")
    if legacy.startswith("localhost/"):
        return model.SecurityProfile(
            "Localhost",
            _absolute(legacy.removeprefix("localhost"), f"{field}.seccomp_profile_path"),
        )
    return model.SecurityProfile("Unconfined")


def _apparmor(sc: pb.LinuxContainerSecurityContext) -> str:
    """``runtime/default``, ``unconfined`` or ``localhost/<profile>`` (the legacy form)."""
    if not sc.HasField("apparmor"):
        return sc.apparmor_profile
    kind = _enum_name(
        pb.SecurityProfile.ProfileType,
        sc.apparmor.profile_type,
        "config.linux.security_context.apparmor.profile_type",
    )
    if kind == "Localhost":
        return f"localhost/{sc.apparmor.localhost_ref}"
    return "runtime/default" if kind == "RuntimeDefault" else "unconfined"


#: Below this a container cannot start at all (the same floor Docker enforces).
MIN_MEMORY_LIMIT = 6 << 20


def resources_from_pb(message: pb.LinuxContainerResources, field: str) -> model.Resources:
    r = message
    if r.cpu_period and not 1000 <= r.cpu_period <= 1_000_000:
        raise InvalidArgument(f"{field}.cpu_period: {r.cpu_period} is outside 1000..1000000 us")
    if r.cpu_quota < -1 or 0 < r.cpu_quota < 1000:
        raise InvalidArgument(f"{field}.cpu_quota: {r.cpu_quota} is not -1, 0 or >= 1000 us")
    if not 0 <= r.cpu_shares <= 262_144:
        raise InvalidArgument(f"{field}.cpu_shares: {r.cpu_shares} is outside 0..262144")
    if r.memory_limit_in_bytes < 0 or 0 < r.memory_limit_in_bytes < MIN_MEMORY_LIMIT:
        raise InvalidArgument(
            f"{field}.memory_limit_in_bytes: {r.memory_limit_in_bytes} is below the minimum "
            f"of {MIN_MEMORY_LIMIT} bytes (6 MiB)"
        )
    if r.memory_swap_limit_in_bytes < -1:
        raise InvalidArgument(f"{field}.memory_swap_limit_in_bytes: must be -1 or more")
    if not -1000 <= r.oom_score_adj <= 1000:
        raise InvalidArgument(f"{field}.oom_score_adj: {r.oom_score_adj} is outside -1000..1000")
    for i, hp in enumerate(r.hugepage_limits):
        if not hp.page_size:
            raise InvalidArgument(f"{field}.hugepage_limits[{i}].page_size is required")
    return model.Resources(
        cpu_period=r.cpu_period,
        cpu_quota=r.cpu_quota,
        cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        oom_score_adj=r.oom_score_adj,
        cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
        hugepage_limits=tuple(model.HugepageLimit(h.page_size, h.limit) for h in r.hugepage_limits),
        unified=dict(r.unified),
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
    )


def _port_mapping(p: pb.PortMapping, field: str) -> model.PortMapping:
    protocol = _enum_name(pb.Protocol, p.protocol, f"{field}.protocol")
    if not 1 <= p.container_port <= 65535:
        raise InvalidArgument(f"{field}.container_port: {p.container_port} is outside 1..65535")
    if not 0 <= p.host_port <= 65535:
        raise InvalidArgument(f"{field}.host_port: {p.host_port} is outside 0..65535")
    if p.host_ip:
        try:
            ipaddress.ip_address(p.host_ip)
        except ValueError:
            raise InvalidArgument(f"{field}.host_ip: '{p.host_ip}' is not an IP address") from None
    return model.PortMapping(protocol, p.container_port, p.host_port, p.host_ip)


def sandbox_config_from_pb(message: pb.PodSandboxConfig, handler: str) -> model.SandboxConfig:
    require(message, "metadata")
    m = message.metadata
    for name in ("name", "namespace", "uid"):
        if not getattr(m, name):
            raise InvalidArgument(f"config.metadata.{name} is required")
    _absolute(message.log_directory, "config.log_directory", required=False)
    linux = message.linux
    security = linux.security_context
    namespaces = _namespaces(
        security.namespace_options, "config.linux.security_context.namespace_options"
    )
    if namespaces.pid == "TARGET":
        raise InvalidArgument(
            "config.linux.security_context.namespace_options.pid: TARGET is for containers only"
        )
    pod_security = model.PodSecurity(
        namespaces=namespaces,
        run_as_user=security.run_as_user.value if security.HasField("run_as_user") else None,
        run_as_group=security.run_as_group.value if security.HasField("run_as_group") else None,
        readonly_rootfs=security.readonly_rootfs,
        supplemental_groups=tuple(security.supplemental_groups),
        privileged=security.privileged,
        seccomp=_seccomp(security, "config.linux.security_context"),
    )
    dns = None
    if message.HasField("dns_config"):
        d = message.dns_config
        dns = model.DnsConfig(tuple(d.servers), tuple(d.searches), tuple(d.options))
    return model.SandboxConfig(
        metadata=model.PodMetadata(m.name, m.uid, m.namespace, m.attempt),
        hostname=message.hostname,
        log_directory=message.log_directory,
        dns=dns,
        port_mappings=tuple(
            _port_mapping(p, f"config.port_mappings[{i}]")
            for i, p in enumerate(message.port_mappings)
        ),
        labels=dict(message.labels),
        annotations=dict(message.annotations),
        cgroup_parent=linux.cgroup_parent,
        security=pod_security,
        sysctls=dict(linux.sysctls),
        resources=resources_from_pb(linux.resources, "config.linux.resources")
        if linux.HasField("resources")
        else None,
        runtime_handler=handler,
    )


_PROPAGATION = {
    "PROPAGATION_PRIVATE": "PRIVATE",
    "PROPAGATION_HOST_TO_CONTAINER": "HOST_TO_CONTAINER",
    "PROPAGATION_BIDIRECTIONAL": "BIDIRECTIONAL",
}


def container_config_from_pb(message: pb.ContainerConfig) -> model.ContainerConfig:
    require(message, "metadata")
    if not message.metadata.name:
        raise InvalidArgument("config.metadata.name is required")
    image = require_image(message, label="config.image")
    _absolute(message.working_dir, "config.working_dir", required=False)
    if message.log_path and (
        message.log_path.startswith("/") or ".." in message.log_path.split("/")
    ):
        raise InvalidArgument(
            f"config.log_path: '{message.log_path}' must stay inside the sandbox's log_directory"
        )
    mounts = []
    for i, mount in enumerate(message.mounts):
        field = f"config.mounts[{i}]"
        _absolute(mount.container_path, f"{field}.container_path")
        if mount.HasField("image") and mount.image.image:
            # UNIMPLEMENTED is how a runtime says it lacks image volumes (critest skips on it).
            raise Unimplemented(f"{field}: image volumes are not supported")
        _absolute(mount.host_path, f"{field}.host_path")
        if mount.uidMappings or mount.gidMappings:
            raise InvalidArgument(f"{field}: id-mapped mounts are not supported")
        if mount.recursive_read_only:
            # The kubelet asks only if Status advertises the feature, which we do not.
            raise InvalidArgument(f"{field}: recursive read-only mounts are not supported")
        propagation = _PROPAGATION[
            _enum_name(pb.MountPropagation, mount.propagation, f"{field}.propagation")
        ]
        mounts.append(
            model.Mount(
                mount.container_path,
                mount.host_path,
                mount.readonly,
                propagation,
                mount.recursive_read_only,
            )
        )
    devices = []
    for i, device in enumerate(message.devices):
        field = f"config.devices[{i}]"
        _absolute(device.container_path, f"{field}.container_path")
        _absolute(device.host_path, f"{field}.host_path")
        devices.append(
            model.Device(device.container_path, device.host_path, device.permissions or "rwm")
        )
    linux = message.linux
    sc = linux.security_context
    security = model.ContainerSecurity(
        capabilities=model.Capabilities(
            tuple(sc.capabilities.add_capabilities),
            tuple(sc.capabilities.drop_capabilities),
            tuple(sc.capabilities.add_ambient_capabilities),
        ),
        privileged=sc.privileged,
        namespaces=_namespaces(
            sc.namespace_options, "config.linux.security_context.namespace_options"
        ),
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        run_as_username=sc.run_as_username,
        readonly_rootfs=sc.readonly_rootfs,
        supplemental_groups=tuple(sc.supplemental_groups),
        no_new_privs=sc.no_new_privs,
        masked_paths=tuple(sc.masked_paths),
        readonly_paths=tuple(sc.readonly_paths),
        seccomp=_seccomp(sc, "config.linux.security_context"),
        apparmor=_apparmor(sc),
    )
    if security.run_as_username and security.run_as_user is not None:
        raise InvalidArgument(
            "config.linux.security_context: run_as_user and run_as_username are exclusive"
        )
    if (
        security.run_as_group is not None
        and security.run_as_user is None
        and not security.run_as_username
    ):
        # As containerd and CRI-O do: a group without a user is refused, not guessed at.
        raise InvalidArgument(
            "config.linux.security_context: run_as_group is set without run_as_user "
            "or run_as_username"
        )
    stop_signal = ""
    if message.stop_signal:
        stop_signal = _enum_name(pb.Signal, message.stop_signal, "config.stop_signal")
    return model.ContainerConfig(
        name=message.metadata.name,
        attempt=message.metadata.attempt,
        image=image,
        command=tuple(message.command),
        args=tuple(message.args),
        working_dir=message.working_dir,
        envs=tuple((kv.key, kv.value) for kv in message.envs),
        mounts=tuple(mounts),
        devices=tuple(devices),
        labels=dict(message.labels),
        annotations=dict(message.annotations),
        log_path=message.log_path,
        stdin=message.stdin,
        stdin_once=message.stdin_once,
        tty=message.tty,
        resources=resources_from_pb(linux.resources, "config.linux.resources"),
        security=security,
        cdi_devices=tuple(d.name for d in message.CDI_devices),
        stop_signal=stop_signal,
    )


# ---------------------------------------------------------------------------
# Pods and containers: domain -> responses

_SANDBOX_STATE = {SandboxState.READY: pb.SANDBOX_READY, SandboxState.NOTREADY: pb.SANDBOX_NOTREADY}
_CONTAINER_STATE = {
    ContainerState.CREATED: pb.CONTAINER_CREATED,
    ContainerState.RUNNING: pb.CONTAINER_RUNNING,
    ContainerState.EXITED: pb.CONTAINER_EXITED,
    ContainerState.UNKNOWN: pb.CONTAINER_UNKNOWN,
}


def _sandbox_metadata(record: SandboxRecord) -> pb.PodSandboxMetadata:
    m = record.config.metadata
    return pb.PodSandboxMetadata(name=m.name, uid=m.uid, namespace=m.namespace, attempt=m.attempt)


def sandbox_to_pb(record: SandboxRecord) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=record.id,
        metadata=_sandbox_metadata(record),
        state=_SANDBOX_STATE[record.state],
        created_at=record.created_at,
        labels=record.config.labels,
        annotations=record.config.annotations,
        runtime_handler=record.handler,
    )


def _namespace_option(options: model.NamespaceOptions) -> pb.NamespaceOption:
    return pb.NamespaceOption(
        network=pb.NamespaceMode.Value(options.network),
        pid=pb.NamespaceMode.Value(options.pid),
        ipc=pb.NamespaceMode.Value(options.ipc),
        target_id=options.target_id,
    )


def sandbox_status_to_pb(record: SandboxRecord) -> pb.PodSandboxStatus:
    ips = list(record.ips)
    network = pb.PodSandboxNetworkStatus(
        ip=ips[0] if ips else "", additional_ips=[pb.PodIP(ip=ip) for ip in ips[1:]]
    )
    return pb.PodSandboxStatus(
        id=record.id,
        metadata=_sandbox_metadata(record),
        state=_SANDBOX_STATE[record.state],
        created_at=record.created_at,
        network=network,
        linux=pb.LinuxPodSandboxStatus(
            namespaces=pb.Namespace(options=_namespace_option(record.config.security.namespaces))
        ),
        labels=record.config.labels,
        annotations=record.config.annotations,
        runtime_handler=record.handler,
    )


def _container_metadata(record: ContainerRecord) -> pb.ContainerMetadata:
    return pb.ContainerMetadata(name=record.config.name, attempt=record.config.attempt)


def container_to_pb(record: ContainerRecord) -> pb.Container:
    return pb.Container(
        id=record.id,
        pod_sandbox_id=record.sandbox_id,
        metadata=_container_metadata(record),
        image=pb.ImageSpec(image=record.image_ref),
        image_ref=record.image_id,
        state=_CONTAINER_STATE[record.state],
        created_at=record.created_at,
        labels=record.config.labels,
        annotations=record.config.annotations,
        image_id=record.image_id,
    )


def resources_to_pb(resources: model.Resources) -> pb.LinuxContainerResources:
    r = resources
    return pb.LinuxContainerResources(
        cpu_period=r.cpu_period,
        cpu_quota=r.cpu_quota,
        cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        oom_score_adj=r.oom_score_adj,
        cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
        hugepage_limits=[
            pb.HugepageLimit(page_size=h.page_size, limit=h.limit) for h in r.hugepage_limits
        ],
        unified=r.unified,
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
    )


_PROPAGATION_PB = {v: pb.MountPropagation.Value(k) for k, v in _PROPAGATION.items()}


def container_status_to_pb(record: ContainerRecord) -> pb.ContainerStatus:
    status = pb.ContainerStatus(
        id=record.id,
        metadata=_container_metadata(record),
        state=_CONTAINER_STATE[record.state],
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        exit_code=record.exit_code,
        image=pb.ImageSpec(image=record.image_ref),
        image_ref=record.image_id,
        reason=record.reason,
        message=record.message,
        labels=record.config.labels,
        annotations=record.config.annotations,
        mounts=[
            pb.Mount(
                container_path=c,
                host_path=h,
                readonly=ro,
                propagation=_PROPAGATION_PB.get(p, pb.PROPAGATION_PRIVATE),
            )
            for c, h, ro, p in record.mounts
        ],
        log_path=record.log_path,
        resources=pb.ContainerResources(linux=resources_to_pb(record.config.resources)),
        image_id=record.image_id,
        user=pb.ContainerUser(
            linux=pb.LinuxContainerUser(
                uid=record.uid, gid=record.gid, supplemental_groups=list(record.additional_gids)
            )
        ),
    )
    if record.config.stop_signal:
        status.stop_signal = pb.Signal.Value(record.config.stop_signal)
    return status


# ---------------------------------------------------------------------------
# Stats, metrics and events


def _u64(value: int) -> pb.UInt64Value:
    return pb.UInt64Value(value=max(0, int(value)))


def container_stats_to_pb(usage: ContainerUsage) -> pb.ContainerStats:
    record = usage.record
    stats = pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=record.id,
            metadata=_container_metadata(record),
            labels=record.config.labels,
            annotations=record.config.annotations,
        )
    )
    reading = usage.cgroup
    if reading is not None:
        stats.cpu.CopyFrom(
            pb.CpuUsage(
                timestamp=usage.timestamp, usage_core_nano_seconds=_u64(reading.cpu_usage_ns)
            )
        )
        if usage.nano_cores is not None:
            stats.cpu.usage_nano_cores.CopyFrom(_u64(usage.nano_cores))
        memory = pb.MemoryUsage(
            timestamp=usage.timestamp,
            working_set_bytes=_u64(reading.memory_working_set),
            usage_bytes=_u64(reading.memory_usage),
            rss_bytes=_u64(reading.memory_rss),
            page_faults=_u64(reading.page_faults),
            major_page_faults=_u64(reading.major_page_faults),
        )
        if reading.memory_limit:
            memory.available_bytes.CopyFrom(_u64(reading.memory_limit - reading.memory_working_set))
        stats.memory.CopyFrom(memory)
        if reading.swap_usage is not None:
            stats.swap.CopyFrom(
                pb.SwapUsage(timestamp=usage.timestamp, swap_usage_bytes=_u64(reading.swap_usage))
            )
    if usage.writable_layer is not None:
        stats.writable_layer.CopyFrom(
            pb.FilesystemUsage(
                timestamp=usage.timestamp,
                fs_id=pb.FilesystemIdentifier(mountpoint=usage.writable_layer.mountpoint),
                used_bytes=_u64(usage.writable_layer.used_bytes),
                inodes_used=_u64(usage.writable_layer.inodes_used),
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
                timestamp=usage.timestamp, usage_core_nano_seconds=_u64(reading.cpu_usage_ns)
            )
        )
        if usage.nano_cores is not None:
            linux.cpu.usage_nano_cores.CopyFrom(_u64(usage.nano_cores))
        linux.memory.CopyFrom(
            pb.MemoryUsage(
                timestamp=usage.timestamp,
                working_set_bytes=_u64(reading.memory_working_set),
                usage_bytes=_u64(reading.memory_usage),
                rss_bytes=_u64(reading.memory_rss),
                page_faults=_u64(reading.page_faults),
                major_page_faults=_u64(reading.major_page_faults),
            )
        )
        linux.process.CopyFrom(
            pb.ProcessUsage(timestamp=usage.timestamp, process_count=_u64(reading.pids))
        )
    if usage.interfaces:
        interfaces = [
            pb.NetworkInterfaceUsage(
                name=c.name,
                rx_bytes=_u64(c.rx_bytes),
                rx_errors=_u64(c.rx_errors),
                tx_bytes=_u64(c.tx_bytes),
                tx_errors=_u64(c.tx_errors),
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
            metadata=_sandbox_metadata(record),
            labels=record.config.labels,
            annotations=record.config.annotations,
        ),
        linux=linux,
    )


def descriptors_to_pb(descriptors: Iterable[Descriptor]) -> list[pb.MetricDescriptor]:
    return [
        pb.MetricDescriptor(name=d.name, help=d.help, label_keys=list(d.labels))
        for d in descriptors
    ]


def _metric(sample: MetricSample) -> pb.Metric:
    return pb.Metric(
        name=sample.name,
        timestamp=sample.timestamp,
        metric_type=pb.COUNTER if sample.counter else pb.GAUGE,
        label_values=list(sample.label_values),
        value=_u64(sample.value),
    )


def pod_metrics_to_pb(usage: PodUsage) -> pb.PodSandboxMetrics:
    pod_level, per_container = pod_samples(usage)
    return pb.PodSandboxMetrics(
        pod_sandbox_id=usage.record.id,
        metrics=[_metric(s) for s in pod_level],
        container_metrics=[
            pb.ContainerMetrics(container_id=cid, metrics=[_metric(s) for s in samples])
            for cid, samples in per_container.items()
        ],
    )


_EVENT_TYPES = {
    "created": pb.CONTAINER_CREATED_EVENT,
    "started": pb.CONTAINER_STARTED_EVENT,
    "stopped": pb.CONTAINER_STOPPED_EVENT,
    "deleted": pb.CONTAINER_DELETED_EVENT,
}


def event_to_pb(event: ContainerEvent) -> pb.ContainerEventResponse:
    response = pb.ContainerEventResponse(
        container_id=event.container_id,
        container_event_type=_EVENT_TYPES[event.kind],
        created_at=event.created_at,
        containers_statuses=[container_status_to_pb(c) for c in event.containers],
    )
    if event.sandbox is not None:
        response.pod_sandbox_status.CopyFrom(sandbox_status_to_pb(event.sandbox))
    return response
