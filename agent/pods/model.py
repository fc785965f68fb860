"""Plain values describing pods and containers: what the kubelet asked for.

These mirror the CRI configs field for field where the runtime uses them,
without protobuf (``cri.convert`` translates). Enum-like fields are strings
with the CRI's value names (``"POD"``, ``"NODE"``, ``"RuntimeDefault"``...).
All are frozen: a config never changes after creation, only its status does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "Capabilities",
    "ContainerConfig",
    "ContainerSecurity",
    "Device",
    "DnsConfig",
    "HugepageLimit",
    "IdMapping",
    "Mount",
    "NamespaceOptions",
    "PodMetadata",
    "PodSecurity",
    "PortMapping",
    "Resources",
    "SandboxConfig",
    "SecurityProfile",
    "UserNamespace",
]


@dataclass(frozen=True, slots=True)
class PodMetadata:
    name: str
    uid: str
    namespace: str
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class PortMapping:
    protocol: str  # "TCP", "UDP", "SCTP"
    container_port: int
    host_port: int = 0
    host_ip: str = ""


@dataclass(frozen=True, slots=True)
class DnsConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IdMapping:
    """One range of a user namespace's uid or gid map (``/proc/<pid>/uid_map`` line)."""

    container_id: int
    host_id: int
    length: int

    def host(self, container_id: int) -> int | None:
        """The host id of ``container_id``, or None when it is outside the range."""
        offset = container_id - self.container_id
        return self.host_id + offset if 0 <= offset < self.length else None


@dataclass(frozen=True, slots=True)
class UserNamespace:
    """``hostUsers: false``: the pod's processes run in a user namespace of these maps."""

    uids: tuple[IdMapping, ...]
    gids: tuple[IdMapping, ...]

    @property
    def root_uid(self) -> int:
        """The host uid of the container's root."""
        return next(h for m in self.uids if (h := m.host(0)) is not None)

    @property
    def root_gid(self) -> int:
        return next(h for m in self.gids if (h := m.host(0)) is not None)


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    network: str = "POD"  # POD or NODE
    pid: str = "CONTAINER"  # POD, CONTAINER, NODE or TARGET
    ipc: str = "POD"  # POD or NODE
    target_id: str = ""
    #: the pod's user namespace (None: the host's, ``hostUsers: true``)
    userns: UserNamespace | None = None


@dataclass(frozen=True, slots=True)
class SecurityProfile:
    type: str = "RuntimeDefault"  # RuntimeDefault, Unconfined, Localhost
    localhost_ref: str = ""


@dataclass(frozen=True, slots=True)
class PodSecurity:
    namespaces: NamespaceOptions = field(default_factory=NamespaceOptions)
    run_as_user: int | None = None
    run_as_group: int | None = None
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    privileged: bool = False
    seccomp: SecurityProfile = field(default_factory=lambda: SecurityProfile("Unconfined"))
    #: the pod's AppArmor request (``runtime/default``, ``unconfined``, ``localhost/<p>``,
    #: "" for none): the infra process's profile
    apparmor: str = ""


@dataclass(frozen=True, slots=True)
class HugepageLimit:
    page_size: str  # "2MB", "1GB"
    limit: int


@dataclass(frozen=True, slots=True)
class Resources:
    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    unified: dict[str, str] = field(default_factory=dict)
    memory_swap_limit_in_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    metadata: PodMetadata
    hostname: str = ""
    log_directory: str = ""
    dns: DnsConfig | None = None
    port_mappings: tuple[PortMapping, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    security: PodSecurity = field(default_factory=PodSecurity)
    sysctls: dict[str, str] = field(default_factory=dict)
    resources: Resources | None = None
    runtime_handler: str = ""


@dataclass(frozen=True, slots=True)
class Mount:
    container_path: str
    host_path: str
    readonly: bool = False
    propagation: str = "PRIVATE"  # PRIVATE, HOST_TO_CONTAINER, BIDIRECTIONAL
    recursive_read_only: bool = False
    #: an id-mapped mount (the kubelet asks for one for volumes of a user-namespaced pod)
    uid_mappings: tuple[IdMapping, ...] = ()
    gid_mappings: tuple[IdMapping, ...] = ()
    #: an image volume: the image (as the kubelet names it) instead of a host path
    image: str = ""
    image_sub_path: str = ""


@dataclass(frozen=True, slots=True)
class Device:
    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True, slots=True)
class Capabilities:
    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    add_ambient: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerSecurity:
    capabilities: Capabilities = field(default_factory=Capabilities)
    privileged: bool = False
    namespaces: NamespaceOptions = field(default_factory=NamespaceOptions)
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    #: Merge: the image's /etc/group memberships of the user too; Strict: only the pod's
    supplemental_groups_policy: str = "Merge"
    no_new_privs: bool = False
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    seccomp: SecurityProfile = field(default_factory=lambda: SecurityProfile("Unconfined"))
    apparmor: str = ""


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    name: str
    attempt: int
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    devices: tuple[Device, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    resources: Resources = field(default_factory=Resources)
    security: ContainerSecurity = field(default_factory=ContainerSecurity)
    cdi_devices: tuple[str, ...] = ()
    stop_signal: str = ""
