"""Container messages: the config in, containers and their status out."""

from __future__ import annotations

import json
from typing import Any

from agent._util.serde import to_dict
from agent.api.cri.runtime.v1 import api_pb2 as pb
from agent.cri.convert.resources import resources_from_pb, resources_to_pb
from agent.cri.convert.security import (
    apparmor_from_pb,
    id_mappings_from_pb,
    namespaces_from_pb,
    seccomp_from_pb,
)
from agent.cri.validate import (
    absolute,
    container_target,
    enum_name,
    object_name,
    require,
    require_image,
)
from agent.errors import InvalidArgument
from agent.pods import ContainerRecord, ContainerState, Selector, model

__all__ = [
    "container_config_from_pb",
    "container_metadata_to_pb",
    "container_selector",
    "container_status_to_pb",
    "container_to_pb",
    "container_verbose_info",
]


PROPAGATION = {
    "PROPAGATION_PRIVATE": "PRIVATE",
    "PROPAGATION_HOST_TO_CONTAINER": "HOST_TO_CONTAINER",
    "PROPAGATION_BIDIRECTIONAL": "BIDIRECTIONAL",
}


def container_config_from_pb(message: pb.ContainerConfig) -> model.ContainerConfig:
    require(message, "metadata")
    object_name(message.metadata.name, "config.metadata.name")
    image = require_image(message, label="config.image")
    absolute(message.working_dir, "config.working_dir", required=False)
    if message.log_path and (
        message.log_path.startswith("/") or ".." in message.log_path.split("/")
    ):
        raise InvalidArgument(
            f"config.log_path: '{message.log_path}' must stay inside the sandbox's log_directory"
        )
    mounts = []
    for i, mount in enumerate(message.mounts):
        field = f"config.mounts[{i}]"
        container_target(mount.container_path, f"{field}.container_path")
        image_volume = mount.image.image if mount.HasField("image") else ""
        if image_volume:
            if not mount.readonly:
                # KEP-4639: an image volume is read-only; the kubelet always says so.
                raise InvalidArgument(f"{field}: an image volume must be readonly")
            sub_path = mount.image_sub_path
            if sub_path.startswith("/") or ".." in sub_path.split("/"):
                raise InvalidArgument(
                    f"{field}.image_sub_path: '{sub_path}' must be a path inside the image"
                )
        else:
            absolute(mount.host_path, f"{field}.host_path")
        propagation = PROPAGATION[
            enum_name(pb.MountPropagation, mount.propagation, f"{field}.propagation")
        ]
        if mount.recursive_read_only and not mount.readonly:
            # api.proto: "If this field is true, readonly must be true too."
            raise InvalidArgument(f"{field}: recursive_read_only needs readonly")
        if mount.recursive_read_only and propagation != "PRIVATE":
            # api.proto: "... and propagation must be PRIVATE."
            raise InvalidArgument(
                f"{field}: recursive_read_only needs propagation PROPAGATION_PRIVATE"
            )
        uids = id_mappings_from_pb(mount.uidMappings, f"{field}.uidMappings")
        gids = id_mappings_from_pb(mount.gidMappings, f"{field}.gidMappings")
        if bool(uids) != bool(gids):
            raise InvalidArgument(f"{field}: an id-mapped mount needs uid and gid mappings")
        mounts.append(
            model.Mount(
                mount.container_path,
                mount.host_path,
                mount.readonly,
                propagation,
                mount.recursive_read_only,
                uids,
                gids,
                image_volume,
                mount.image_sub_path if image_volume else "",
            )
        )
    devices = []
    for i, device in enumerate(message.devices):
        field = f"config.devices[{i}]"
        container_target(device.container_path, f"{field}.container_path")
        absolute(device.host_path, f"{field}.host_path")
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
        namespaces=namespaces_from_pb(
            sc.namespace_options, "config.linux.security_context.namespace_options"
        ),
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        run_as_username=sc.run_as_username,
        readonly_rootfs=sc.readonly_rootfs,
        supplemental_groups=tuple(sc.supplemental_groups),
        supplemental_groups_policy=enum_name(
            pb.SupplementalGroupsPolicy,
            sc.supplemental_groups_policy,
            "config.linux.security_context.supplemental_groups_policy",
        ),
        no_new_privs=sc.no_new_privs,
        masked_paths=tuple(sc.masked_paths),
        readonly_paths=tuple(sc.readonly_paths),
        seccomp=seccomp_from_pb(sc, "config.linux.security_context"),
        apparmor=apparmor_from_pb(sc),
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
        stop_signal = enum_name(pb.Signal, message.stop_signal, "config.stop_signal")
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


_CONTAINER_STATE = {
    ContainerState.CREATED: pb.CONTAINER_CREATED,
    ContainerState.RUNNING: pb.CONTAINER_RUNNING,
    ContainerState.EXITED: pb.CONTAINER_EXITED,
    ContainerState.UNKNOWN: pb.CONTAINER_UNKNOWN,
}


def container_metadata_to_pb(record: ContainerRecord) -> pb.ContainerMetadata:
    return pb.ContainerMetadata(name=record.config.name, attempt=record.config.attempt)


def container_to_pb(record: ContainerRecord) -> pb.Container:
    return pb.Container(
        id=record.id,
        pod_sandbox_id=record.sandbox_id,
        metadata=container_metadata_to_pb(record),
        image=pb.ImageSpec(image=record.display_image),
        image_ref=record.image_id,
        state=_CONTAINER_STATE[record.state],
        created_at=record.created_at,
        labels=record.config.labels,
        annotations=record.config.annotations,
        image_id=record.image_id,
    )


_PROPAGATION_PB = {v: pb.MountPropagation.Value(k) for k, v in PROPAGATION.items()}


def container_status_to_pb(record: ContainerRecord) -> pb.ContainerStatus:
    # An image volume's propagation is the one its request asked for (and the spec applied).
    image_propagation = {
        (m.container_path, m.image): m.propagation for m in record.config.mounts if m.image
    }
    status = pb.ContainerStatus(
        id=record.id,
        metadata=container_metadata_to_pb(record),
        state=_CONTAINER_STATE[record.state],
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        exit_code=record.exit_code,
        image=pb.ImageSpec(image=record.display_image),
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
        ]
        + [
            pb.Mount(
                container_path=c,
                readonly=True,
                image=pb.ImageSpec(image=ref, image_ref=image_id),
                image_sub_path=sub_path,
                propagation=_PROPAGATION_PB.get(
                    image_propagation.get((c, ref), ""), pb.PROPAGATION_PRIVATE
                ),
            )
            for c, ref, image_id, sub_path in record.image_mounts
        ],
        log_path=record.log_path,
        resources=pb.ContainerResources(linux=resources_to_pb(record.config.resources)),
        image_id=record.image_id,
        user=pb.ContainerUser(
            # The primary gid is one of the process's groups too (as containerd and
            # CRI-O report it, and critest's SupplementalGroupsPolicy specs expect).
            linux=pb.LinuxContainerUser(
                uid=record.uid,
                gid=record.gid,
                supplemental_groups=list(dict.fromkeys((record.gid, *record.additional_gids))),
            )
        ),
    )
    if record.config.stop_signal:
        status.stop_signal = pb.Signal.Value(record.config.stop_signal)
    return status


_CONTAINER_STATE_FROM_PB = {v: k for k, v in _CONTAINER_STATE.items()}


def container_selector(
    f: pb.ContainerFilter | pb.ContainerStatsFilter | None,
) -> Selector:
    """The containers a List/Stats filter asks for (all of them without a filter)."""
    if f is None:
        return Selector()
    state = None
    if isinstance(f, pb.ContainerFilter) and f.HasField("state"):
        state = _CONTAINER_STATE_FROM_PB.get(f.state.state)
    return Selector(
        id_prefix=f.id,
        sandbox_prefix=f.pod_sandbox_id,
        state=state,
        labels=dict(f.label_selector),
    )


def container_verbose_info(record: ContainerRecord, runtime_spec: dict[str, Any]) -> dict[str, str]:
    """``ContainerStatus`` verbose info: the JSON crictl shows under ``info``."""
    info: dict[str, Any] = {
        "pid": record.pid,
        "sandboxID": record.sandbox_id,
        "runtimeHandler": record.handler,
        "config": to_dict(record.config),
        "runtimeSpec": runtime_spec,
    }
    if record.gpu:
        info["gpu"] = json.loads(record.gpu)
    return {"info": json.dumps(info, sort_keys=True)}
