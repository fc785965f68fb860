"""Sandbox and container records, and the states they move through.

    container:  CREATED ──start──► RUNNING ──exit/stop──► EXITED ──remove──► (gone)
                   │                                         ▲
                   └──────────── stop / failed start ────────┘
                UNKNOWN: the agent lost track (conmon died); stop and remove still work.

    sandbox:    CREATING ──infra runs──► READY ──stop / infra died──► NOTREADY ──remove──► (gone)
                   │ (RunPodSandbox failed or the agent died: undone)
                   └──────────────────────────────────────────────────────────► (gone)

CREATING is the agent's own: the CRI sees it as NOTREADY. Records are frozen;
changes go through the store, which persists them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from agent.pods.model import ContainerConfig, SandboxConfig

__all__ = [
    "ContainerRecord",
    "ContainerState",
    "ExitReason",
    "SandboxRecord",
    "SandboxState",
    "mark_exited",
]


class SandboxState(enum.StrEnum):
    CREATING = "CREATING"
    READY = "READY"
    NOTREADY = "NOTREADY"

    def is_ready(self) -> bool:
        return self is SandboxState.READY

    def is_creating(self) -> bool:
        """RunPodSandbox is (or was, if the agent died) still setting it up."""
        return self is SandboxState.CREATING

    def reported(self) -> SandboxState:
        """What the CRI is told: READY or NOTREADY."""
        return SandboxState.READY if self.is_ready() else SandboxState.NOTREADY


class ContainerState(enum.StrEnum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    UNKNOWN = "UNKNOWN"

    def can_start(self) -> bool:
        return self is ContainerState.CREATED

    def is_running(self) -> bool:
        return self is ContainerState.RUNNING

    def is_exited(self) -> bool:
        return self is ContainerState.EXITED

    def is_live(self) -> bool:
        """A process may exist: it must be stopped before removal."""
        return self in (ContainerState.CREATED, ContainerState.RUNNING, ContainerState.UNKNOWN)

    def can_update(self) -> bool:
        return self in (ContainerState.CREATED, ContainerState.RUNNING)


class ExitReason(enum.StrEnum):
    """``ContainerStatus.reason`` of an exited container (the kubelet's words)."""

    COMPLETED = "Completed"
    ERROR = "Error"
    OOM_KILLED = "OOMKilled"
    START_ERROR = "StartError"

    @classmethod
    def of(cls, code: int, *, oom_killed: bool) -> ExitReason:
        if oom_killed:
            return cls.OOM_KILLED
        return cls.COMPLETED if code == 0 else cls.ERROR


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
    #: the pinned user namespace of a ``hostUsers: false`` pod, "" for the host's
    userns: str = ""
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
    #: the GPU assignment (``gpu.Assignment`` as JSON), "" when it holds none
    gpu: str = ""
    #: image volumes: (container path, image as named, image id, sub path); the images
    #: count as in use while the container exists
    image_mounts: tuple[tuple[str, str, str, str], ...] = field(default_factory=tuple)
    #: the image's name for people (status, metrics' ``image`` label): its first tag when
    #: the kubelet named it by id (it sends the id PullImage returned), "" before this field
    image_name: str = ""

    @property
    def display_image(self) -> str:
        """The image as containerd shows it: a tag rather than an id where one is known."""
        return self.image_name or self.image_ref


def mark_exited(
    record: ContainerRecord,
    *,
    code: int,
    reason: ExitReason,
    finished_at: int,
    message: str = "",
    started_at: int | None = None,
) -> ContainerRecord:
    """The record of ``record`` once it ended; the one place a container becomes EXITED."""
    return replace(
        record,
        state=ContainerState.EXITED,
        exit_code=code,
        reason=reason.value,
        finished_at=finished_at,
        started_at=record.started_at if started_at is None else started_at,
        message=message or record.message,
    )
