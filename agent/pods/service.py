"""The pods subsystem as the CRI layer sees it: sandboxes, containers, exits, recovery.

Builds the runtimes (one per configured handler whose binary exists), the
store, both managers and the exit watcher, and reconciles stored records
with what is really running when the agent starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace

from agent.config import Config
from agent.db import MetadataDB
from agent.images.service import ImageManager
from agent.network import netns
from agent.oci.exits import ExitWatcher
from agent.oci.probe import resolve_binary
from agent.oci.runtime import OciRuntime
from agent.pods.containers import ContainerManager
from agent.pods.infra import ensure_infra_rootfs
from agent.pods.oom import OomPolicy, has_cap_sys_resource
from agent.pods.podfiles import PodDirs
from agent.pods.podnet import PodNetwork
from agent.pods.sandboxes import SandboxManager
from agent.pods.seccomp_profiles import SeccompProfiles
from agent.pods.state import ContainerState, SandboxState
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
    def __init__(
        self,
        config: Config,
        db: MetadataDB,
        images: ImageManager,
        *,
        on_change: Callable[[str, str, str], None] = lambda kind, what, oid: None,
    ) -> None:
        self.config = config
        self.store = PodStore(db)
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
        exit_dir = os.path.join(config.agent.state_dir, "exits")
        os.makedirs(exit_dir, mode=0o700, exist_ok=True)
        self._watcher = ExitWatcher(exit_dir, self._on_exit)

    def _on_exit(self, object_id: str) -> None:
        if object_id in self.store.sandboxes:
            self.sandboxes.notice_exit(object_id)
        elif object_id in self.store.containers:
            self.containers.notice_exit(object_id)

    async def start(self) -> None:
        """Prepare host state, reconcile records with reality, then watch exits.

        Assumptions: containers may have exited while the agent was down (their
        exit files say how); after a reboot the state dir is empty, so nothing
        listed as running can be, and pods are not ready.
        """
        ensure_infra_rootfs(self.config.agent.root_dir, self._infra_binary)
        await self.network.prepare()
        for sandbox in list(self.store.sandboxes.values()):
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
        for container in list(self.store.containers.values()):
            if container.state is ContainerState.EXITED:
                continue
            if self.containers.status(container.id).state is ContainerState.EXITED:
                continue
            runtime = self.runtimes.get(container.handler)
            state = await runtime.state(container.id) if runtime is not None else None
            if state is None:
                self.store.update_container(
                    container.id,
                    lambda r: replace(
                        r,
                        state=ContainerState.EXITED,
                        exit_code=255,
                        reason="Error",
                        message="the container was gone when the agent started",
                        finished_at=r.finished_at or r.started_at or r.created_at,
                    ),
                )
        self._watcher.start()
        self._watcher.scan()

    async def close(self) -> None:
        """Stop watching; pods keep running. The pin dir mount goes once no pod needs it."""
        self._watcher.stop()
        await self.containers.close()
        if not any(s.netns for s in self.store.sandboxes.values()):
            await netns.cleanup_dir(self.network.pin_dir, release_dir=True)
