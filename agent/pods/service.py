"""The pods subsystem as the CRI layer sees it: sandboxes, containers, exits, recovery.

Builds the runtimes (one per configured handler whose binary exists), the
store, both managers and the exit watcher, and reconciles stored records
with what is really running when the agent starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace

from agent.config import Config
from agent.db import MetadataDB
from agent.images.service import ImageManager
from agent.network import netns
from agent.oci.execs import ExecSession
from agent.oci.exits import ExitWatcher
from agent.oci.probe import resolve_binary
from agent.oci.runtime import OciRuntime
from agent.pods import mounts
from agent.pods.containers import AttachTarget, ContainerManager
from agent.pods.events import ContainerEvent, EventBroker
from agent.pods.infra import ensure_infra_rootfs
from agent.pods.oom import OomPolicy, has_cap_sys_resource
from agent.pods.podfiles import PodDirs
from agent.pods.podnet import PodNetwork
from agent.pods.sandboxes import SandboxManager
from agent.pods.seccomp_profiles import SeccompProfiles
from agent.pods.spec import cgroups_path
from agent.pods.state import ContainerRecord, ContainerState, SandboxRecord, SandboxState
from agent.pods.stats import ContainerUsage, PodUsage, StatsCollector
from agent.pods.store import PodStore

__all__ = ["PodService"]

log = logging.getLogger(__name__)


def build_runtimes(config: Config) -> dict[str, OciRuntime]:
    conmon = resolve_binary(config.runtime.conmon_path) or config.runtime.conmon_path
    runtimes = {}
    for name, handler in config.runtime.handlers.items():
        binary = resolve_binary(handler.path)
        if binary is None:
            continue
        runtimes[name] = OciRuntime(
            name=name,
            binary=binary,
            root=handler.root,
            conmon_binary=conmon,
            state_dir=config.agent.state_dir,
            systemd_cgroup=config.runtime.cgroup_driver == "systemd",
        )
    return runtimes


class PodService:
    def __init__(self, config: Config, db: MetadataDB, images: ImageManager) -> None:
        self.config = config
        self.store = PodStore(db)
        self.events = EventBroker()
        on_change = self._publish
        self.runtimes = build_runtimes(config)
        self.dirs = PodDirs(config.agent.root_dir, config.agent.state_dir)
        restrict = {"auto": not has_cap_sys_resource(), "true": True, "false": False}[
            config.runtime.restrict_oom_score_adj
        ]
        oom = OomPolicy(restrict)
        seccomp = SeccompProfiles()
        self.containers = ContainerManager(
            config,
            store=self.store,
            images=images,
            runtimes=self.runtimes,
            oom=oom,
            seccomp=seccomp,
            pod_dirs=self.dirs,
            on_change=lambda kind, cid: on_change(kind, "container", cid),
        )
        self.network = PodNetwork(config)
        self._infra_binary = config.runtime.infra_binary
        self.sandboxes = SandboxManager(
            config,
            store=self.store,
            containers=self.containers,
            runtimes=self.runtimes,
            pod_dirs=self.dirs,
            network=self.network,
            oom=oom,
            seccomp=seccomp,
            infra_rootfs=os.path.join(config.agent.root_dir, "infra", "rootfs"),
            on_change=lambda kind, sid: on_change(kind, "sandbox", sid),
        )
        images.in_use = self.store.image_in_use
        self.stats = StatsCollector(self.containers.root)
        exit_dir = os.path.join(config.agent.state_dir, "exits")
        os.makedirs(exit_dir, mode=0o700, exist_ok=True)
        self._watcher = ExitWatcher(exit_dir, self._on_exit)

    def _publish(self, kind: str, what: str, object_id: str) -> None:
        """Snapshot the pod of ``object_id`` now and hand the event to subscribers."""
        if not self.events.subscribers:
            return
        if what == "sandbox":
            sandbox = self.store.sandboxes.get(object_id)
            sandbox_id = object_id
        else:
            container = self.store.containers.get(object_id)
            sandbox_id = container.sandbox_id if container is not None else ""
            sandbox = self.store.sandboxes.get(sandbox_id)
        containers = tuple(self.store.containers_of(sandbox_id)) if sandbox_id else ()
        self.events.publish(ContainerEvent(object_id, kind, time.time_ns(), sandbox, containers))

    def _on_exit(self, object_id: str) -> None:
        if object_id in self.store.sandboxes:
            self.sandboxes.notice_exit(object_id)
        elif object_id in self.store.containers:
            self.containers.notice_exit(object_id)

    async def start(self) -> None:
        """Prepare host state, reconcile records with reality, then watch exits.

        Assumptions: containers may have exited while the agent was down (their
        exit files say how, since the state dir survives an agent restart);
        after a reboot the state dir is empty, so nothing listed as running can
        be, and pods are not ready. A crash inside an RPC leaves either a record
        marked as being set up (a sandbox) or files without a record (a
        container): both are undone here. Every step is idempotent.
        """
        ensure_infra_rootfs(self.config.agent.root_dir, self._infra_binary)
        await self.network.prepare()
        for sandbox in list(self.store.sandboxes.values()):
            if sandbox.state is SandboxState.NOTREADY and sandbox.message == "starting":
                log.info(
                    "undoing pod sandbox %s, interrupted while it was being set up", sandbox.id
                )
                await self.sandboxes.remove(sandbox.id)
                continue
            runtime = self.runtimes.get(sandbox.handler)
            if sandbox.state is SandboxState.READY:
                state = await runtime.state(sandbox.id) if runtime is not None else None
                if state is None or state.get("status") != "running":
                    self.store.update_sandbox(
                        sandbox.id,
                        lambda r: replace(
                            r,
                            state=SandboxState.NOTREADY,
                            message="the infra process was gone when the agent started",
                        ),
                    )
        await self.containers.reconcile()
        await self.containers.remove_orphans()
        known = set(self.store.sandboxes) | set(self.store.containers)
        for runtime in self.runtimes.values():
            for stale in await runtime.end_exec_sessions():
                log.info("killed exec session %s, left running when the agent stopped", stale)
            for orphan in set(await runtime.list_ids()) - known:
                log.info("deleting %s from %s: no record names it", orphan, runtime.name)
                await runtime.delete(orphan)
                runtime.forget(orphan)
        for base in (self.dirs.state, self.dirs.root):
            for name in os.listdir(base):
                if len(name) == 64 and name not in self.store.sandboxes:
                    await mounts.unmount(self.dirs.shm(name))
                    await asyncio.to_thread(self.dirs.delete, name)
        pins = {os.path.basename(s.netns) for s in self.store.sandboxes.values() if s.netns}
        for removed in await netns.cleanup_dir(self.network.pin_dir, keep=pins):
            log.info("removed network namespace pin %s of no known pod", removed)
        self._watcher.start()
        self._watcher.scan()

    # -- streaming (the server's backend) -------------------------------------------

    async def exec_session(
        self,
        container_id: str,
        cmd: list[str],
        *,
        tty: bool,
        stdin: bool,
        console_size: tuple[int, int] | None = None,
    ) -> ExecSession:
        return await self.containers.exec_session(
            container_id, cmd, tty=tty, stdin=stdin, console_size=console_size
        )

    def attach_target(self, container_id: str) -> AttachTarget:
        return self.containers.attach_target(container_id)

    def network_namespace(self, sandbox_id: str) -> str:
        return self.sandboxes.network_namespace(sandbox_id)

    def container_cgroup(self, record: ContainerRecord) -> str:
        sandbox = self.store.sandboxes.get(record.sandbox_id)
        parent = sandbox.config.cgroup_parent if sandbox is not None else ""
        return cgroups_path(self.config.runtime.cgroup_driver, parent, record.id)

    async def container_usage(self, record: ContainerRecord) -> ContainerUsage:
        return await self.stats.container(record, self.container_cgroup(record))

    async def pod_usage(self, sandbox: SandboxRecord, *, processes: bool = False) -> PodUsage:
        """The pod's usage; ``processes`` adds per-process fd and socket counts (metrics)."""
        current = [self.containers.status(c.id) for c in self.store.containers_of(sandbox.id)]
        containers = [
            (c, self.container_cgroup(c)) for c in current if c.state is ContainerState.RUNNING
        ]
        return await self.stats.pod(
            self.sandboxes.status(sandbox.id), containers, processes=processes
        )

    async def close(self) -> None:
        """Stop watching; pods keep running. The pin dir mount goes once no pod needs it."""
        self._watcher.stop()
        await self.containers.close()
        if not any(s.netns for s in self.store.sandboxes.values()):
            await netns.cleanup_dir(self.network.pin_dir, release_dir=True)
