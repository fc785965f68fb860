"""The OCI runtime seam: what ``pods`` needs from a runtime, in plain values.

``Runtime`` is the contract (CRI-O's ``RuntimeImpl``, cut to what we use);
``runc.ConmonRuntime`` implements it with conmon + runc/crun, and the tests'
``FakeRuntime`` implements it in memory. Every method takes a container id
(the infra process of a pod is a container too) and plain data; nothing here
knows CRI types, conmon flags or file layouts.

    create ──► CREATED ──start──► RUNNING ──(exit)──► STOPPED ──destroy──► (forgotten)

An exit is reported by the runtime writing ``<exit_dir>/<id>`` (conmon does);
``exit_status`` reads it back. ``destroy`` is the one teardown: runc delete
(killing what is left), wait for the monitor, forget every runtime file.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass
from typing import Any, Protocol

from agent.oci.execs import ExecSession

__all__ = [
    "CreateOptions",
    "ExecResult",
    "ExitStatus",
    "RuncState",
    "RuncStatus",
    "Runtime",
]


class RuncStatus(enum.StrEnum):
    """runc's ``state`` status values (runtime-spec "state")."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"

    def has_process(self) -> bool:
        """The container's init process exists (it may be frozen)."""
        return self in (RuncStatus.CREATED, RuncStatus.RUNNING, RuncStatus.PAUSED)


@dataclass(frozen=True, slots=True)
class RuncState:
    status: RuncStatus
    pid: int = 0

    def is_running(self) -> bool:
        return self.status is RuncStatus.RUNNING


@dataclass(frozen=True, slots=True)
class CreateOptions:
    log_path: str
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False


@dataclass(frozen=True, slots=True)
class ExitStatus:
    code: int
    finished_at: int  # ns
    oom_killed: bool


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


class Runtime(Protocol):
    """One OCI runtime handler (``runc``, ``crun``, or a test fake)."""

    name: str
    #: where exit files appear (``<exit_dir>/<id>``); the agent watches it
    exit_dir: str

    async def create(self, cid: str, bundle: str, options: CreateOptions) -> int:
        """Create the container from ``bundle`` under a monitor; its init pid."""
        ...

    async def start(self, cid: str) -> None: ...

    async def kill(
        self, cid: str, sig: int = signal.SIGKILL, *, all_processes: bool = False
    ) -> None:
        """Signal it; a container that is gone or stopped is not an error."""
        ...

    async def state(self, cid: str) -> RuncState | None:
        """The runtime's view, or None if it does not know ``cid``."""
        ...

    async def list_ids(self) -> list[str]: ...

    async def update(self, cid: str, resources: dict[str, Any]) -> None: ...

    async def exec_sync(
        self, cid: str, process: dict[str, Any], timeout: float | None
    ) -> ExecResult: ...

    async def exec_session(
        self, cid: str, process: dict[str, Any], *, tty: bool, stdin: bool
    ) -> ExecSession: ...

    async def end_exec_sessions(self) -> list[str]:
        """Kill exec'd processes left by a previous agent; what was ended."""
        ...

    def exit_status(self, cid: str) -> ExitStatus | None:
        """How it ended, or None while it runs."""
        ...

    def monitor_alive(self, cid: str) -> bool | None:
        """Is its monitor running? None when unknown."""
        ...

    async def wait_monitor(self, cid: str, timeout: float = 5.0) -> None:
        """Wait for the monitor to exit (killing it if it lingers)."""
        ...

    async def destroy(self, cid: str) -> None:
        """Delete it (killing what is left), reap its monitor, forget its files; idempotent."""
        ...

    def attach_socket(self, cid: str) -> str: ...

    def control_fifo(self, cid: str) -> str: ...

    async def reopen_log(self, cid: str, log_path: str) -> None:
        """Make the monitor reopen ``log_path`` (after the kubelet rotated it)."""
        ...
