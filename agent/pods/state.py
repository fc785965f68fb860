"""Sandbox and container records, and the states they move through.

    container:  CREATED ──start──► RUNNING ──exit/stop──► EXITED ──remove──► (gone)
                   │                                         ▲
                   └──────────── stop / failed start ────────┘
                UNKNOWN: the agent lost track (conmon died); stop and remove still work.

    sandbox:    READY ──stop / infra died──► NOTREADY ──remove──► (gone)

Records are frozen; changes go through the store, which persists them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from agent.pods.model import ContainerConfig, SandboxConfig

__all__ = ["ContainerRecord", "ContainerState", "SandboxRecord", "SandboxState"]


class SandboxState(enum.StrEnum):
    READY = "READY"
    NOTREADY = "NOTREADY"


class ContainerState(enum.StrEnum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    UNKNOWN = "UNKNOWN"

    def can_start(self) -> bool:
        return self is ContainerState.CREATED

    def is_live(self) -> bool:
        """A process may exist: it must be stopped before removal."""
        return self in (ContainerState.CREATED, ContainerState.RUNNING, ContainerState.UNKNOWN)


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    id: str
    config: SandboxConfig
    state: SandboxState
    created_at: int  # ns
    handler: str
    #: the pinned network namespace, "" for host network
    netns: str = ""
    ips: tuple[str, ...] = ()
    cni_result: str = ""
    #: the CNI network the pod was attached to, as JSON (the one DEL must use)
    network_conf: str = ""
    infra_pid: int = 0
    cgroup_path: str = ""
    #: why the sandbox is NOTREADY (for verbose status)
    message: str = ""

    @property
    def name(self) -> str:
        m = self.config.metadata
        return f"{m.name}_{m.namespace}_{m.uid}_{m.attempt}"


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    id: str
    sandbox_id: str
    config: ContainerConfig
    image_id: str
    #: the image as the kubelet named it (echoed in status)
    image_ref: str
    state: ContainerState
    created_at: int
    log_path: str
    handler: str
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    #: effective mounts (container path, host path, readonly, propagation)
    mounts: tuple[tuple[str, str, bool, str], ...] = field(default_factory=tuple)
