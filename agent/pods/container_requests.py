"""What a CreateContainer request becomes before anything is made: the checks that refuse
it, the paths and names derived from it, the database rows it adds.

Pure functions of the request, its pod and the store: ``ContainerManager.create`` calls
them first, so a request they refuse creates nothing.
"""

from __future__ import annotations

import os
from dataclasses import replace

from agent._util.securejoin import resolve_in_root
from agent.db import GpuHolder
from agent.errors import FailedPrecondition, InvalidArgument
from agent.gpu import Assignment
from agent.images import ImageRecord
from agent.pods import mounts, spec
from agent.pods.model import ContainerConfig
from agent.pods.podfiles import PodDirs
from agent.pods.state import ContainerRecord, SandboxRecord
from agent.pods.store import PodStore

__all__ = [
    "check_id_mapped_mounts",
    "check_pid_target",
    "check_recursive_read_only",
    "check_userns",
    "gpu_holders",
    "image_name",
    "log_path",
    "with_protective_paths",
]


def check_pid_target(store: PodStore, config: ContainerConfig, sandbox: SandboxRecord) -> None:
    """``pid: TARGET`` joins another container's PID namespace: only within its own pod,
    and only while it runs (a created one has no process yet, an exited one's pid may be
    anyone's now)."""
    namespaces = config.security.namespaces
    if namespaces.pid != "TARGET":
        return
    target = store.container(namespaces.target_id)
    if target.sandbox_id != sandbox.id:
        raise InvalidArgument(
            f"namespace_options.target_id {target.id} is a container of another pod; "
            "a container may only join the PID namespace of one in its own pod"
        )
    if not target.state.is_running() or target.pid <= 0:
        raise FailedPrecondition(
            f"namespace_options.target_id {target.id} is {target.state.value}, not running: "
            "its PID namespace can only be joined while it runs"
        )


def check_userns(config: ContainerConfig, sandbox: SandboxRecord) -> None:
    """A container runs in its pod's user namespace: options of its own (absent means the
    pod's) must be the pod's, as containerd checks."""
    own = config.security.namespaces.userns
    if own is not None and own != sandbox.config.security.namespaces.userns:
        raise InvalidArgument(
            "config.linux.security_context.namespace_options.userns_options: differs from "
            f"the user namespace of pod sandbox {sandbox.id}"
        )


def check_recursive_read_only(config: ContainerConfig) -> None:
    """Refused up front where the kernel cannot (not advertised there), rather than as a
    late UNKNOWN from the mount."""
    if mounts.recursive_readonly_supported():
        return
    for i, mount in enumerate(config.mounts):
        if mount.recursive_read_only:
            raise FailedPrecondition(
                f"config.mounts[{i}] {mount.container_path}: recursive read-only mounts are "
                f"not supported on this node (Linux {os.uname().release}; they need 5.12)"
            )


def check_id_mapped_mounts(config: ContainerConfig, sandbox: SandboxRecord) -> None:
    """An id-mapped volume maps through the pod's own user namespace, nothing else."""
    userns = sandbox.config.security.namespaces.userns
    for i, mount in enumerate(config.mounts):
        if not mount.uid_mappings:
            continue
        if userns is None:
            raise InvalidArgument(
                f"config.mounts[{i}]: an id-mapped mount needs a pod in a user namespace"
            )
        if (mount.uid_mappings, mount.gid_mappings) != (userns.uids, userns.gids):
            raise InvalidArgument(
                f"config.mounts[{i}]: its id mappings differ from the pod's user namespace"
            )


def with_protective_paths(
    config: ContainerConfig, sandbox: SandboxRecord, *, enabled: bool
) -> ContainerConfig:
    """A request with no masked and no read-only paths gets the runtime's defaults.

    The kubelet always sends them (and sends none for ``procMount: Unmasked``, which
    only user-namespaced pods may use); other clients send nothing, and then
    ``/proc/sys/kernel/core_pattern`` would be a way to host root. CRI-O's choice;
    ``runtime.default_masked_paths = false`` turns it off.
    """
    security = config.security
    if (
        not enabled
        or sandbox.config.security.namespaces.userns is not None
        or security.privileged
        or security.masked_paths
        or security.readonly_paths
    ):
        return config
    protected = replace(
        security,
        masked_paths=spec.DEFAULT_MASKED_PATHS,
        readonly_paths=spec.DEFAULT_READONLY_PATHS,
    )
    return replace(config, security=protected)


def log_path(pod_dirs: PodDirs, sandbox: SandboxRecord, config: ContainerConfig, cid: str) -> str:
    """Where conmon writes the CRI log.

    The kubelet's ``<log_directory>/<log_path>`` (joined with every symlink resolved
    inside the directory, so a name never leads out of it); without them, the
    container's own file in its pod's directory, gone with the pod — never a path
    made of the container's name.
    """
    directory = sandbox.config.log_directory
    relative = config.log_path
    if not relative:
        return os.path.join(pod_dirs.persistent(sandbox.id), "logs", f"{cid}.log")
    if os.path.isabs(relative) and not directory:
        return relative
    if os.path.isabs(relative):
        raise InvalidArgument("log_path must be relative to the sandbox's log_directory")
    if not directory or ".." in relative.split("/"):
        raise InvalidArgument(f"log_path '{relative}' escapes the log directory")
    return resolve_in_root(directory, relative)


def image_name(requested: str, image: ImageRecord) -> str:
    """A tag of the image when the request named it by id or digest (what a kubelet sends:
    the id PullImage returned), as containerd reports it; else the name as requested."""
    named_by_id = requested in (image.id, image.id.removeprefix("sha256:")) or "@" in requested
    if not named_by_id:
        return requested
    tags = [n for n in image.names if "@" not in n]
    return (tags or list(image.names) or [requested])[0]


def gpu_holders(
    record: ContainerRecord, sandbox: SandboxRecord, assignment: Assignment
) -> list[GpuHolder]:
    """The ``gpu_assignments`` rows of a new container."""
    m = sandbox.config.metadata
    return [
        GpuHolder(
            container_id=record.id,
            sandbox_id=sandbox.id,
            pod_namespace=m.namespace,
            pod_name=m.name,
            pod_uid=m.uid,
            container_name=record.config.name,
            device_uuid=grant.uuid,
            gpu_uuid=grant.gpu_uuid,
            device_index=grant.index,
            mig_profile=grant.profile,
            via=grant.via,
            request=grant.request,
        )
        for grant in assignment.grants
    ]
