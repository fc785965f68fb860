"""After an agent restart: bring every record in line with what really runs.

Assumptions: containers may have exited while the agent was down (their
exit files say how, since the state dir survives an agent restart); after a
reboot the state dir is empty, so nothing listed as running can be, and pods
are not ready. A crash inside an RPC leaves either a sandbox record still
CREATING or container files without a record: both are undone here. Every
step is idempotent (a crash during recovery re-runs it on the next start).

    sandbox CREATING                      -> removed (CNI DEL included)
    sandbox READY, infra not running      -> NOTREADY
    container CREATED, runc says running  -> RUNNING (died inside StartContainer)
    container live, runc has nothing      -> EXITED 255
    container running, conmon gone        -> UNKNOWN / EXITED (``exits.check_monitor``)
    files, runc containers, pod dirs, netns pins no record names -> deleted
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace

from agent.network import netns
from agent.oci import Runtime
from agent.pods.containers import ContainerManager
from agent.pods.exits import LOST_EXIT_CODE
from agent.pods.mounts import Mounter
from agent.pods.podfiles import PodDirs
from agent.pods.podnet import PodNetwork
from agent.pods.sandboxes import SandboxManager
from agent.pods.state import ContainerState, ExitReason, SandboxState, mark_exited
from agent.pods.store import PodStore

__all__ = ["Recovery"]

log = logging.getLogger(__name__)


class Recovery:
    def __init__(
        self,
        *,
        store: PodStore,
        sandboxes: SandboxManager,
        containers: ContainerManager,
        runtimes: dict[str, Runtime],
        dirs: PodDirs,
        network: PodNetwork | None,
        mounter: Mounter,
    ) -> None:
        self._store = store
        self._sandboxes = sandboxes
        self._containers = containers
        self._runtimes = runtimes
        self._dirs = dirs
        self._network = network
        self._mounter = mounter

    async def run(self) -> None:
        await self.sandboxes()
        await self.containers()
        await self.leftovers()

    async def sandboxes(self) -> None:
        for sandbox in self._store.sandboxes():
            if sandbox.state.is_creating():
                log.info(
                    "undoing pod sandbox %s, interrupted while it was being set up", sandbox.id
                )
                await self._sandboxes.remove(sandbox.id)
                continue
            if not sandbox.state.is_ready():
                continue
            runtime = self._runtimes.get(sandbox.handler)
            state = await runtime.state(sandbox.id) if runtime is not None else None
            if state is None or not state.is_running():
                self._store.update_sandbox(
                    sandbox.id,
                    lambda r: replace(
                        r,
                        state=SandboxState.NOTREADY,
                        message="the infra process was gone when the agent started",
                    ),
                )

    async def containers(self) -> None:
        exits = self._containers.exits
        for record in self._store.containers():
            if record.state.is_exited() or exits.apply(record.id):
                continue
            runtime = self._runtimes.get(record.handler)
            state = await runtime.state(record.id) if runtime is not None else None
            if state is not None and state.is_running() and record.state.can_start():
                # The agent died inside StartContainer, after runc started it.
                self._store.update_container(
                    record.id,
                    lambda r: replace(r, state=ContainerState.RUNNING, started_at=time.time_ns()),
                )
            elif state is None or not state.status.has_process():
                self._store.update_container(
                    record.id,
                    lambda r: mark_exited(
                        r,
                        code=LOST_EXIT_CODE,
                        reason=ExitReason.ERROR,
                        message="the container was gone when the agent started",
                        finished_at=r.finished_at or r.started_at or r.created_at,
                    ),
                )
            else:
                exits.check_monitor(self._store.container(record.id))

    async def leftovers(self) -> None:
        """Delete what no record names: container files, runc state, pod dirs, pins."""
        self._containers.empty_trash()
        for cid in self._containers.leftover_ids():
            for runtime in self._runtimes.values():
                await runtime.destroy(cid)
            await self._containers.remove_files(cid)
            log.info("removed the remains of container %s (created when the agent died)", cid)
        known = {s.id for s in self._store.sandboxes()} | {c.id for c in self._store.containers()}
        for runtime in self._runtimes.values():
            for stale in await runtime.end_exec_sessions():
                log.info("killed exec session %s, left running when the agent stopped", stale)
            for orphan in set(await runtime.list_ids()) - known:
                log.info("deleting %s from %s: no record names it", orphan, runtime.name)
                await runtime.destroy(orphan)
        for base in (self._dirs.state, self._dirs.root):
            for name in os.listdir(base):
                if len(name) == 64 and self._store.get_sandbox(name) is None:
                    await self._mounter.unmount(self._dirs.shm(name))
                    await asyncio.to_thread(self._dirs.delete, name)
        for stale in self._sandboxes.remove_stale_userns():
            log.info("removed user namespace pin %s of no known pod", stale)
        if self._network is not None:
            pins = {os.path.basename(s.netns) for s in self._store.sandboxes() if s.netns}
            for removed in await netns.cleanup_dir(self._network.pin_dir, keep=pins):
                log.info("removed network namespace pin %s of no known pod", removed)
