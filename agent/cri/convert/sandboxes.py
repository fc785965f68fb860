"""Pod sandbox messages: the config in, sandboxes and their status out."""

from __future__ import annotations

import ipaddress
import json

from agent._util.serde import to_dict
from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.convert.resources import resources_from_pb
from agent.cri.convert.security import (
    apparmor_from_pb,
    namespace_option_to_pb,
    namespaces_from_pb,
    seccomp_from_pb,
)
from agent.cri.validate import absolute, cgroup_parent, enum_name, object_name, require
from agent.errors import InvalidArgument
from agent.pods import SandboxRecord, SandboxState, Selector, model

__all__ = [
    "sandbox_config_from_pb",
    "sandbox_metadata_to_pb",
    "sandbox_selector",
    "sandbox_status_to_pb",
    "sandbox_to_pb",
    "sandbox_verbose_info",
]


def _port_mapping(p: pb.PortMapping, field: str) -> model.PortMapping:
    protocol = enum_name(pb.Protocol, p.protocol, f"{field}.protocol")
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
        object_name(getattr(m, name), f"config.metadata.{name}")
    absolute(message.log_directory, "config.log_directory", required=False)
    linux = message.linux
    security = linux.security_context
    namespaces = namespaces_from_pb(
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
        seccomp=seccomp_from_pb(security, "config.linux.security_context"),
        apparmor=apparmor_from_pb(security),
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
        cgroup_parent=cgroup_parent(linux.cgroup_parent, "config.linux.cgroup_parent"),
        security=pod_security,
        sysctls=dict(linux.sysctls),
        resources=resources_from_pb(linux.resources, "config.linux.resources")
        if linux.HasField("resources")
        else None,
        runtime_handler=handler,
    )


_SANDBOX_STATE = {SandboxState.READY: pb.SANDBOX_READY, SandboxState.NOTREADY: pb.SANDBOX_NOTREADY}


def sandbox_metadata_to_pb(record: SandboxRecord) -> pb.PodSandboxMetadata:
    m = record.config.metadata
    return pb.PodSandboxMetadata(name=m.name, uid=m.uid, namespace=m.namespace, attempt=m.attempt)


def sandbox_to_pb(record: SandboxRecord) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=record.id,
        metadata=sandbox_metadata_to_pb(record),
        state=_SANDBOX_STATE[record.state.reported()],
        created_at=record.created_at,
        labels=record.config.labels,
        annotations=record.config.annotations,
        runtime_handler=record.handler,
    )


def sandbox_status_to_pb(record: SandboxRecord) -> pb.PodSandboxStatus:
    ips = list(record.ips)
    network = pb.PodSandboxNetworkStatus(
        ip=ips[0] if ips else "", additional_ips=[pb.PodIP(ip=ip) for ip in ips[1:]]
    )
    return pb.PodSandboxStatus(
        id=record.id,
        metadata=sandbox_metadata_to_pb(record),
        state=_SANDBOX_STATE[record.state.reported()],
        created_at=record.created_at,
        network=network,
        linux=pb.LinuxPodSandboxStatus(
            namespaces=pb.Namespace(
                options=namespace_option_to_pb(record.config.security.namespaces)
            )
        ),
        labels=record.config.labels,
        annotations=record.config.annotations,
        runtime_handler=record.handler,
    )


_SANDBOX_STATE_FROM_PB = {v: k for k, v in _SANDBOX_STATE.items()}


def sandbox_selector(
    f: pb.PodSandboxFilter | pb.PodSandboxStatsFilter | None,
) -> Selector:
    """The sandboxes a List/Stats filter asks for (all of them without a filter)."""
    if f is None:
        return Selector()
    state = None
    if isinstance(f, pb.PodSandboxFilter) and f.HasField("state"):
        state = _SANDBOX_STATE_FROM_PB.get(f.state.state)
    return Selector(id_prefix=f.id, state=state, labels=dict(f.label_selector))


def sandbox_verbose_info(record: SandboxRecord) -> dict[str, str]:
    """``PodSandboxStatus`` verbose info: the JSON crictl shows under ``info``."""
    info = {
        "pid": record.infra_pid,
        "netns": record.netns,
        "runtimeHandler": record.handler,
        "cgroupsPath": record.cgroup_path,
        "message": record.message,
        "config": to_dict(record.config),
    }
    return {"info": json.dumps(info, sort_keys=True)}
