"""``FakeRuntime``: an in-memory ``oci.Runtime`` that reports exits as conmon does.

A container is a record with a status; :meth:`FakeRuntime.exit` ends one by
writing ``<exit_dir>/<id>`` (temp file + rename, like conmon), so the agent's
real exit watcher and exit tracker see it exactly as they see conmon's.
Faults are switches: ``fail_create``, ``fail_start``, ``ignore_term``,
``kill_monitor``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError, FailedPrecondition, NotFound, Unimplemented
from agent.oci import (
    CreateFailed,
    CreateOptions,
    ExecResult,
    ExecSession,
    ExitStatus,
    RuncState,
    RuncStatus,
)

#: Fake pids: far above any real pid (the kernel's maximum is 4194304), so never alive.
_PIDS = itertools.count(5_000_000)


@dataclass
class FakeContainer:
    bundle: str
    options: CreateOptions
    pid: int
    status: RuncStatus = RuncStatus.CREATED
    monitor_alive: bool = True
    updates: list[dict[str, Any]] = field(default_factory=list)


class FakeRuntime:
    def __init__(self, state_dir: str, name: str = "runc") -> None:
        self.name = name
        self.exit_dir = os.path.join(state_dir, "exits")
        os.makedirs(self.exit_dir, exist_ok=True)
        self.containers: dict[str, FakeContainer] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_create: str | None = None
        self.fail_start: str | None = None
        #: the containers' processes ignore SIGTERM (a stop must escalate to SIGKILL)
        self.ignore_term = False
        self._oom: set[str] = set()

    def _get(self, cid: str) -> FakeContainer:
        found = self.containers.get(cid)
        if found is None:
            raise NotFound(f"container {cid} does not exist")
        return found

    # -- what a test does to the "processes" ------------------------------------

    def exit(self, cid: str, code: int, *, oom: bool = False) -> None:
        """The container's process ended: status stopped, and an exit file (unless the
        monitor is dead, which would have written it)."""
        container = self._get(cid)
        container.status = RuncStatus.STOPPED
        if oom:
            self._oom.add(cid)
        if container.monitor_alive:
            temporary = os.path.join(self.exit_dir, f".{cid}")
            with open(temporary, "w") as f:
                f.write(str(code))
            os.rename(temporary, os.path.join(self.exit_dir, cid))

    def kill_monitor(self, cid: str) -> None:
        self._get(cid).monitor_alive = False

    # -- oci.Runtime -------------------------------------------------------------

    async def create(self, cid: str, bundle: str, options: CreateOptions) -> int:
        self.calls.append(("create", cid))
        if self.fail_create is not None:
            raise CreateFailed(self.fail_create)
        if not os.path.exists(os.path.join(bundle, "config.json")):
            raise CreateFailed(f"{bundle}: no config.json")
        pid = next(_PIDS)
        self.containers[cid] = FakeContainer(bundle, options, pid)
        return pid

    async def start(self, cid: str) -> None:
        self.calls.append(("start", cid))
        container = self._get(cid)
        if self.fail_start is not None:
            raise AgentError(self.fail_start)
        if container.status is not RuncStatus.CREATED:
            raise FailedPrecondition(f"cannot start a container that is {container.status}")
        container.status = RuncStatus.RUNNING

    async def kill(
        self, cid: str, sig: int = signal.SIGKILL, *, all_processes: bool = False
    ) -> None:
        self.calls.append(("kill", cid))
        container = self.containers.get(cid)
        if container is None or not container.status.has_process():
            return
        if sig == signal.SIGTERM and self.ignore_term:
            return
        self.exit(cid, 128 + sig)

    async def state(self, cid: str) -> RuncState | None:
        container = self.containers.get(cid)
        if container is None:
            return None
        return RuncState(status=container.status, pid=container.pid)

    async def list_ids(self) -> list[str]:
        return list(self.containers)

    async def update(self, cid: str, resources: dict[str, Any]) -> None:
        self._get(cid).updates.append(resources)

    async def exec_sync(
        self, cid: str, process: dict[str, Any], timeout: float | None
    ) -> ExecResult:
        self._get(cid)
        return ExecResult(0, " ".join(process["args"]).encode(), b"")

    async def exec_session(
        self, cid: str, process: dict[str, Any], *, tty: bool, stdin: bool
    ) -> ExecSession:
        raise Unimplemented("the fake runtime has no interactive exec")

    async def end_exec_sessions(self) -> list[str]:
        return []

    def exit_status(self, cid: str) -> ExitStatus | None:
        path = os.path.join(self.exit_dir, cid)
        try:
            with open(path) as f:
                code = int(f.read())
        except FileNotFoundError:
            return None
        return ExitStatus(code, os.stat(path).st_mtime_ns, cid in self._oom)

    def monitor_alive(self, cid: str) -> bool | None:
        container = self.containers.get(cid)
        return None if container is None else container.monitor_alive

    async def wait_monitor(self, cid: str, timeout: float = 5.0) -> None:
        return None

    async def destroy(self, cid: str) -> None:
        self.calls.append(("destroy", cid))
        self.containers.pop(cid, None)
        self._oom.discard(cid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.exit_dir, cid))

    def attach_socket(self, cid: str) -> str:
        return os.path.join(self.exit_dir, "..", "attach", cid)

    def control_fifo(self, cid: str) -> str:
        return os.path.join(self._get(cid).bundle, "ctl")

    async def reopen_log(self, cid: str, log_path: str) -> None:
        self._get(cid)
        with open(log_path, "a"):
            pass
