"""Build OCI runtime specs (``config.json``) for pod infra and workload containers.

Pure functions of their inputs: what the kubelet asked (``model``), what the
image says (``ImageConfig``), and facts the managers gathered (the resolved
user, the sandbox's namespaces and files). The defaults follow containerd's
CRI plugin (runtime-spec 1.2): the mounts of protocols.md §6.1, its default
capability set, masked/readonly paths exactly as the kubelet sends them,
``/etc/hosts``, ``/etc/resolv.conf``, ``/etc/hostname`` and ``/dev/shm`` from
the sandbox.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from agent.errors import InvalidArgument
from agent.images import ImageConfig
from agent.pods.capabilities import (
    DEFAULT_CAPABILITIES,
    all_capabilities,
    cap_name,
    effective_capabilities,
)
from agent.pods.model import (
    ContainerConfig,
    NamespaceOptions,
    Resources,
    UserNamespace,
)
from agent.pods.spec_mounts import (
    cri_mounts,
    default_mounts,
    device_entries,
    host_devices,
    merge_mounts,
)
from agent.pods.users import User

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_READONLY_PATHS",
    "OCI_VERSION",
    "PodFiles",
    "all_capabilities",
    "cgroups_path",
    "container_spec",
    "effective_capabilities",
    "infra_spec",
    "join_user_namespace",
    "resources_to_oci",
]

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


#: The runtime's masked and read-only paths (containerd's and CRI-O's defaults, which
#: are the kubelet's too): applied when a request has none.
DEFAULT_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
DEFAULT_READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


@dataclass(frozen=True, slots=True)
class PodFiles:
    """Per-sandbox files and mounts every container of the pod shares."""

    hostname: str = ""  # the file, bind-mounted at /etc/hostname
    hosts: str = ""
    resolv_conf: str = ""
    shm: str = ""  # "" means the container gets its own tmpfs (ipc NODE gets the host's)
    netns: str = ""  # "" means the host network


def cgroups_path(
    driver: str, parent: str, container_id: str, *, default_parent: str = "/model-agent"
) -> str:
    """runc's ``cgroupsPath`` for a container under the kubelet's ``cgroup_parent``."""
    if driver == "systemd":
        base = os.path.basename(parent.rstrip("/")) if parent else ""
        slice_name = base if base.endswith(".slice") else "system.slice"
        return f"{slice_name}:model-agent:{container_id}"
    parent = parent or default_parent
    return os.path.join("/" + parent.strip("/"), container_id)


def resources_to_oci(resources: Resources, *, swap_supported: bool = False) -> dict[str, Any]:
    """CRI ``LinuxContainerResources`` → OCI ``linux.resources`` (only what is set)."""
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if resources.cpu_period:
        cpu["period"] = resources.cpu_period
    if resources.cpu_quota:
        cpu["quota"] = resources.cpu_quota
    if resources.cpu_shares:
        cpu["shares"] = resources.cpu_shares
    if resources.cpuset_cpus:
        cpu["cpus"] = resources.cpuset_cpus
    if resources.cpuset_mems:
        cpu["mems"] = resources.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if resources.memory_limit_in_bytes:
        memory["limit"] = resources.memory_limit_in_bytes
        if swap_supported:
            memory["swap"] = resources.memory_swap_limit_in_bytes or resources.memory_limit_in_bytes
    if memory:
        out["memory"] = memory
    if resources.hugepage_limits:
        out["hugepageLimits"] = [
            {"pageSize": h.page_size, "limit": h.limit} for h in resources.hugepage_limits
        ]
    if resources.unified:
        out["unified"] = dict(resources.unified)
    return out


def process_args(config: ContainerConfig, image: ImageConfig) -> list[str]:
    """Kubernetes' rule: command replaces the entrypoint, args replace the cmd."""
    if config.command:
        args = [*config.command, *config.args]
    elif config.args:
        args = [*image.entrypoint, *config.args]
    else:
        args = [*image.entrypoint, *image.cmd]
    if not args:
        raise InvalidArgument("no command specified: the image has none and the config gives none")
    return args


def process_env(config: ContainerConfig, image: ImageConfig, hostname: str) -> list[str]:
    env: dict[str, str] = {}
    for item in image.env:
        key, _, value = item.partition("=")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    if hostname:
        env["HOSTNAME"] = hostname
    env.update(dict(config.envs))
    return [f"{k}={v}" for k, v in env.items()]


def cgroup_v2() -> bool:
    """The unified hierarchy is mounted at /sys/fs/cgroup (modern nodes)."""
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def _namespaces(
    options: NamespaceOptions, *, infra_pid: int, netns: str, host_network: bool
) -> list[dict[str, str]]:
    proc = f"/proc/{infra_pid}/ns"
    namespaces = [{"type": "mount"}]
    if cgroup_v2():
        namespaces.append({"type": "cgroup"})  # as containerd: a private cgroup view
    if options.pid == "POD":
        namespaces.append({"type": "pid", "path": f"{proc}/pid"})
    elif options.pid in ("CONTAINER", "TARGET"):
        namespaces.append({"type": "pid"})
    if options.ipc != "NODE":
        namespaces.append({"type": "ipc", "path": f"{proc}/ipc"})
    if not host_network:
        namespaces.append({"type": "uts", "path": f"{proc}/uts"})
        namespaces.append({"type": "network", "path": netns})
    return namespaces


def join_user_namespace(oci: dict[str, Any], userns: UserNamespace, pin: str) -> None:
    """Put a spec's process in the pod's user namespace (pinned at ``pin``), with its maps.

    runc joins the namespace by path; it still wants the maps (to know the host uid
    of the container's root).
    """
    linux = oci["linux"]
    linux["namespaces"].append({"type": "user", "path": pin})
    for key, maps in (("uidMappings", userns.uids), ("gidMappings", userns.gids)):
        linux[key] = [
            {"containerID": m.container_id, "hostID": m.host_id, "size": m.length} for m in maps
        ]


def container_spec(
    *,
    container_id: str,
    sandbox_id: str,
    config: ContainerConfig,
    image: ImageConfig,
    rootfs: str,
    user: User,
    pod: PodFiles,
    infra_pid: int,
    hostname: str,
    cgroups: str,
    seccomp: dict[str, Any] | None,
    oom_score_adj: int,
    target_pid: int = 0,
    swap_supported: bool = False,
) -> dict[str, Any]:
    security = config.security
    privileged = security.privileged
    caps = effective_capabilities(security.capabilities, privileged=privileged)
    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": {
            "uid": user.uid,
            "gid": user.gid,
            **({"additionalGids": list(user.additional_gids)} if user.additional_gids else {}),
        },
        "args": process_args(config, image),
        "env": process_env(config, image, hostname),
        "cwd": config.working_dir or image.working_dir or "/",
        "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": security.no_new_privs,
        "oomScoreAdj": oom_score_adj,
    }
    if security.capabilities.add_ambient:
        process["capabilities"]["ambient"] = [
            cap_name(c) for c in security.capabilities.add_ambient
        ]
        process["capabilities"]["inheritable"] = process["capabilities"]["ambient"]
    host_network = not pod.netns
    namespaces = _namespaces(
        security.namespaces, infra_pid=infra_pid, netns=pod.netns, host_network=host_network
    )
    if security.namespaces.pid == "TARGET" and target_pid:
        namespaces = [n for n in namespaces if n["type"] != "pid"]
        namespaces.append({"type": "pid", "path": f"/proc/{target_pid}/ns/pid"})
    extra_mounts, rootfs_propagation = cri_mounts(config.mounts)
    targets = {os.path.normpath(m["destination"]) for m in extra_mounts}
    for destination, source in (
        ("/etc/hosts", pod.hosts),
        ("/etc/resolv.conf", pod.resolv_conf),
        ("/etc/hostname", pod.hostname),
    ):
        if source and destination not in targets:
            options = ["rbind", "rprivate", "ro" if security.readonly_rootfs else "rw"]
            extra_mounts.append(
                {"destination": destination, "type": "bind", "source": source, "options": options}
            )
    shm = pod.shm if security.namespaces.ipc != "NODE" else "/dev/shm"
    mounts = merge_mounts(default_mounts(privileged=privileged, shm=shm), extra_mounts)

    devices = list(config.devices) + (host_devices() if privileged else [])
    nodes, allow_rules = device_entries(devices)
    resources = resources_to_oci(config.resources, swap_supported=swap_supported)
    device_rules = (
        [{"allow": True, "access": "rwm"}]
        if privileged
        else [{"allow": False, "access": "rwm"}, *allow_rules]
    )
    resources["devices"] = device_rules
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": cgroups,
        "resources": resources,
        "devices": nodes,
        "maskedPaths": [] if privileged else list(security.masked_paths),
        "readonlyPaths": [] if privileged else list(security.readonly_paths),
    }
    if rootfs_propagation:
        linux["rootfsPropagation"] = rootfs_propagation
    if seccomp is not None and not privileged:
        linux["seccomp"] = seccomp
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": security.readonly_rootfs},
        "mounts": mounts,
        "annotations": {
            **config.annotations,
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": config.name,
            "io.kubernetes.cri.sandbox-id": sandbox_id,
            "io.kubernetes.cri.container-id": container_id,
        },
        "linux": linux,
    }


def infra_spec(
    *,
    sandbox_id: str,
    rootfs: str,
    hostname: str,
    namespaces: NamespaceOptions,
    pod: PodFiles,
    cgroups: str,
    sysctls: dict[str, str],
    seccomp: dict[str, Any] | None,
    oom_score_adj: int,
    privileged: bool,
    run_as_user: int | None,
) -> dict[str, Any]:
    """The pod's infra process, ``catatonit -P``: it holds the pod's namespaces."""
    host_network = not pod.netns
    ns: list[dict[str, str]] = [{"type": "mount"}]
    if namespaces.pid != "NODE":
        ns.append({"type": "pid"})
    if namespaces.ipc != "NODE":
        ns.append({"type": "ipc"})
    if not host_network:
        ns.append({"type": "uts"})
        ns.append({"type": "network", "path": pod.netns})
    for key in sysctls:
        if host_network and key.startswith("net."):
            raise InvalidArgument(f"sysctl {key} cannot be set for a pod on the host network")
        if namespaces.ipc == "NODE" and (
            key.startswith(("kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue."))
        ):
            raise InvalidArgument(f"sysctl {key} cannot be set for a pod in the host IPC namespace")
    shm = pod.shm if namespaces.ipc != "NODE" else ""
    mounts = default_mounts(privileged=privileged, shm=shm)
    linux: dict[str, Any] = {
        "namespaces": ns,
        "cgroupsPath": cgroups,
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "sysctl": dict(sysctls),
        "maskedPaths": []
        if privileged
        else [
            "/proc/acpi",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
        ],
        "readonlyPaths": []
        if privileged
        else [
            "/proc/asound",
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ],
    }
    if seccomp is not None and not privileged:
        linux["seccomp"] = seccomp
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": run_as_user or 0, "gid": 0},
            "args": ["/catatonit", "-P"],
            "env": [f"PATH={DEFAULT_PATH}"],
            "cwd": "/",
            "capabilities": {k: [] for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
            "oomScoreAdj": oom_score_adj,
        },
        "root": {"path": rootfs, "readonly": True},
        "mounts": mounts,
        "annotations": {
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": sandbox_id,
        },
        "linux": linux,
    }
    if not host_network and hostname:
        spec["hostname"] = hostname
    return spec
