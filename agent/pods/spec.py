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
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import InvalidArgument
from agent.images.manifest import ImageConfig
from agent.pods.model import (
    Capabilities,
    ContainerConfig,
    Device,
    Mount,
    NamespaceOptions,
    Resources,
)
from agent.pods.users import User

__all__ = [
    "DEFAULT_CAPABILITIES",
    "OCI_VERSION",
    "PodFiles",
    "all_capabilities",
    "cgroups_path",
    "container_spec",
    "effective_capabilities",
    "infra_spec",
    "resources_to_oci",
]

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: containerd's default set (pkg/oci/spec.go defaultUnixCaps).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
_CAPABILITY_NAMES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
_PROPAGATION = {"PRIVATE": "rprivate", "HOST_TO_CONTAINER": "rslave", "BIDIRECTIONAL": "rshared"}


@dataclass(frozen=True, slots=True)
class PodFiles:
    """Per-sandbox files and mounts every container of the pod shares."""

    hostname: str = ""  # the file, bind-mounted at /etc/hostname
    hosts: str = ""
    resolv_conf: str = ""
    shm: str = ""  # "" means the container gets its own tmpfs (ipc NODE gets the host's)
    netns: str = ""  # "" means the host network


def all_capabilities() -> list[str]:
    """Every capability the agent itself holds: what ``privileged`` and ``ALL`` grant.

    Like containerd's ``WithAllCurrentCapabilities``: asking runc for one the
    agent lacks (root without CAP_SYS_RESOURCE, say) would fail the container.
    """
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    except (OSError, ValueError, StopIteration):
        mask = (1 << len(_CAPABILITY_NAMES)) - 1
    return [f"CAP_{name}" for bit, name in enumerate(_CAPABILITY_NAMES) if mask >> bit & 1]


def _cap_name(name: str) -> str:
    upper = name.upper()
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"


def effective_capabilities(caps: Capabilities, *, privileged: bool) -> list[str]:
    """Default set, plus ``add``, minus ``drop``; ``ALL`` works on either side (as containerd)."""
    everything = all_capabilities()
    if privileged:
        return everything
    adds = [_cap_name(c) for c in caps.add]
    drops = [_cap_name(c) for c in caps.drop]
    for name in (*adds, *drops):
        if name != "CAP_ALL" and name not in everything and name not in _known():
            raise InvalidArgument(f"unknown capability '{name}'")
    result = list(DEFAULT_CAPABILITIES)
    if "CAP_ALL" in adds:
        result = list(everything)
    for name in adds:
        if name != "CAP_ALL" and name not in result:
            result.append(name)
    if "CAP_ALL" in drops:
        # Drop everything except what was explicitly added (containerd's rule).
        result = [c for c in result if c in adds and c != "CAP_ALL"]
    result = [c for c in result if c not in drops]
    return result


def _known() -> set[str]:
    return {f"CAP_{n}" for n in _CAPABILITY_NAMES}


def cgroups_path(driver: str, parent: str, container_id: str) -> str:
    """runc's ``cgroupsPath`` for a container under the kubelet's ``cgroup_parent``."""
    if driver == "systemd":
        base = os.path.basename(parent.rstrip("/")) if parent else ""
        slice_name = base if base.endswith(".slice") else "system.slice"
        return f"{slice_name}:model-agent:{container_id}"
    parent = parent or "/model-agent"
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


def _default_mounts(
    *, privileged: bool, shm: str, readonly_sys: bool = True
) -> list[dict[str, Any]]:
    sys_options = ["nosuid", "noexec", "nodev"] + (
        ["ro"] if readonly_sys and not privileged else []
    )
    cgroup_options = ["nosuid", "noexec", "nodev", "relatime", "ro" if not privileged else "rw"]
    mounts = [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": cgroup_options,
        },
    ]
    if shm:
        mounts.append(
            {
                "destination": "/dev/shm",
                "type": "bind",
                "source": shm,
                "options": ["rbind", "nosuid", "nodev", "noexec"],
            }
        )
    else:
        mounts.append(
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            }
        )
    return mounts


def _depth(path: str) -> int:
    return len([p for p in os.path.normpath(path).split("/") if p])


def _merge_mounts(
    defaults: list[dict[str, Any]], extra: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Extra (CRI and pod) mounts win over defaults at the same path; /dev drops /dev/*."""
    targets = {os.path.normpath(m["destination"]) for m in extra}
    kept = []
    for mount in defaults:
        dest = os.path.normpath(mount["destination"])
        if dest in targets:
            continue
        if "/dev" in targets and dest.startswith("/dev/"):
            continue
        kept.append(mount)
    merged = kept + extra
    # Parents before children, stable otherwise (containerd sorts by depth).
    return sorted(merged, key=lambda m: _depth(m["destination"]))


def _mountinfo_propagation(path: str) -> str:
    """ "shared", "slave" or "private" for the mount containing ``path`` on the host."""
    best = ("", "private")
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mount_point = fields[4]
            optional = fields[6 : fields.index("-")]
            prefix = mount_point.rstrip("/") + "/"
            if (real == mount_point or real.startswith(prefix) or mount_point == "/") and (
                len(mount_point) >= len(best[0])
            ):
                kind = "private"
                if any(o.startswith("shared:") for o in optional):
                    kind = "shared"
                elif any(o.startswith("master:") for o in optional):
                    kind = "slave"
                best = (mount_point, kind)
    return best[1]


def cri_mounts(mounts: Sequence[Mount]) -> tuple[list[dict[str, Any]], str]:
    """OCI mounts for the kubelet's bind mounts, and the rootfs propagation they need."""
    result = []
    rootfs_propagation = ""
    for mount in mounts:
        if not os.path.exists(mount.host_path):
            raise InvalidArgument(
                f"mount host path '{mount.host_path}' (for {mount.container_path}) does not exist"
            )
        propagation = _PROPAGATION.get(mount.propagation)
        if propagation is None:
            raise InvalidArgument(
                f"mount {mount.container_path}: unknown propagation '{mount.propagation}'"
            )
        if propagation != "rprivate":
            host = _mountinfo_propagation(mount.host_path)
            if propagation == "rshared" and host != "shared":
                raise InvalidArgument(
                    f"mount {mount.container_path}: Bidirectional propagation needs the host "
                    f"path {mount.host_path} on a shared mount (it is {host})"
                )
            if propagation == "rslave" and host == "private":
                raise InvalidArgument(
                    f"mount {mount.container_path}: HostToContainer propagation needs the host "
                    f"path {mount.host_path} on a shared or slave mount (it is private)"
                )
            if propagation == "rshared" or not rootfs_propagation:
                rootfs_propagation = propagation
        options = ["rbind", propagation, "ro" if mount.readonly else "rw"]
        result.append(
            {
                "destination": mount.container_path,
                "type": "bind",
                "source": mount.host_path,
                "options": options,
            }
        )
    return result, rootfs_propagation


def device_entries(devices: Iterable[Device]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``linux.devices`` and the cgroup allow rules for the kubelet's devices."""
    nodes, rules = [], []
    for device in devices:
        try:
            st = os.stat(device.host_path)
        except FileNotFoundError:
            raise InvalidArgument(f"device {device.host_path} does not exist") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise InvalidArgument(f"{device.host_path} is not a device node")
        permissions = device.permissions or "rwm"
        if not set(permissions) <= set("rwm"):
            raise InvalidArgument(
                f"device {device.host_path}: permissions '{permissions}' are not a subset of rwm"
            )
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        nodes.append(
            {
                "path": device.container_path,
                "type": kind,
                "major": major,
                "minor": minor,
                "fileMode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
        )
        rules.append(
            {"allow": True, "type": kind, "major": major, "minor": minor, "access": permissions}
        )
    return nodes, rules


def host_devices() -> list[Device]:
    """Every device node under the host's /dev (what a privileged container sees)."""
    found = []
    for dirpath, dirnames, filenames in os.walk("/dev"):
        dirnames[:] = [d for d in dirnames if d not in ("pts", "shm", "mqueue", "fd")]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                if path in ("/dev/console", "/dev/ptmx", "/dev/tty"):
                    continue
                found.append(Device(path, path, "rwm"))
    return found


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
            _cap_name(c) for c in security.capabilities.add_ambient
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
    mounts = _merge_mounts(_default_mounts(privileged=privileged, shm=shm), extra_mounts)

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
    mounts = _default_mounts(privileged=privileged, shm=shm)
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
