"""The pods subsystem as the CRI layer sees it: one facade over sandboxes and containers.

``cri`` calls only this class (never the managers or the store): each CRI
RPC is one method here, which is one call into ``SandboxManager`` or
``ContainerManager``, which calls the ``oci.Runtime``. The constructor builds
the runtimes (one per configured handler whose binary exists), the store, both
managers and the exit watcher; :meth:`start` runs recovery before the agent
reports ready.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from agent.config import Config
from agent.db import MetadataDB
from agent.gpu import GpuService
from agent.images import ImageManager
from agent.network import netns
from agent.oci import ConmonRuntime, ExecSession, ExitWatcher, Runtime, resolve_binary
from agent.pods import mounts
from agent.pods.containers import AttachTarget, ContainerManager, ExecOutput
from agent.pods.events import ContainerEvent, EventBroker, EventKind
from agent.pods.infra import ensure_infra_rootfs
from agent.pods.model import ContainerConfig, Resources, SandboxConfig
from agent.pods.oom import OomPolicy, has_cap_sys_resource
from agent.pods.podfiles import PodDirs
from agent.pods.podnet import PodNetwork
from agent.pods.recovery import Recovery
from agent.pods.sandboxes import SandboxManager
from agent.pods.seccomp_profiles import SeccompProfiles
from agent.pods.selection import Selector, select
from agent.pods.spec import cgroups_path
from agent.pods.state import ContainerRecord, SandboxRecord
from agent.pods.stats import ContainerUsage, PodUsage, StatsCollector
from agent.pods.store import PodStore

__all__ = ["PodService", "build_runtimes"]

log = logging.getLogger(__name__)


def build_runtimes(config: Config) -> dict[str, Runtime]:
    conmon = resolve_binary(config.runtime.conmon_path) or config.runtime.conmon_path
    runtimes: dict[str, Runtime] = {}
    for name, handler in config.runtime.handlers.items():
        binary = resolve_binary(handler.path)
        if binary is None:
            continue
        runtimes[name] = ConmonRuntime(
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
        gpu: GpuService | None = None,
        allocated: Callable[[ContainerConfig], Collection[str]] = lambda config: (),
        runtimes: dict[str, Runtime] | None = None,
        mounter: mounts.Mounter = mounts.HOST,
    ) -> None:
        self._config = config
        self._store = PodStore(db)
        self._events = EventBroker()
        self._runtimes = build_runtimes(config) if runtimes is None else runtimes
        self._dirs = PodDirs(config.agent.root_dir, config.agent.state_dir)
        restrict = {"auto": not has_cap_sys_resource(), "true": True, "false": False}[
            config.runtime.restrict_oom_score_adj
        ]
        oom = OomPolicy(restrict)
        seccomp = SeccompProfiles()
        self._containers = ContainerManager(
            config,
            store=self._store,
            images=images,
            runtimes=self._runtimes,
            mounter=mounter,
            oom=oom,
            seccomp=seccomp,
            pod_dirs=self._dirs,
            on_change=lambda kind, cid: self._publish(kind, container_id=cid),
            gpu=gpu,
            allocated=allocated,
        )
        self._network = PodNetwork(config)
        self._sandboxes = SandboxManager(
            config,
            store=self._store,
            containers=self._containers,
            runtimes=self._runtimes,
            mounter=mounter,
            pod_dirs=self._dirs,
            network=self._network,
            oom=oom,
            seccomp=seccomp,
            infra_rootfs=os.path.join(config.agent.root_dir, "infra", "rootfs"),
            on_change=lambda kind, sid: self._publish(kind, sandbox_id=sid),
        )
        self._recovery = Recovery(
            store=self._store,
            sandboxes=self._sandboxes,
            containers=self._containers,
            runtimes=self._runtimes,
            dirs=self._dirs,
            network=self._network,
            mounter=mounter,
        )
        images.in_use = self._store.image_in_use
        self._stats = StatsCollector(self._containers.root)
        exit_dir = os.path.join(config.agent.state_dir, "exits")
        os.makedirs(exit_dir, mode=0o700, exist_ok=True)
        self._watcher = ExitWatcher(exit_dir, self._on_exit)

    @property
    def supports_user_namespaces(self) -> bool:
        """``RuntimeHandlerFeatures.user_namespaces``: what the start-up probe of id-mapped
        mounts found (the image store's filesystem and tmpfs, not the kernel version alone)."""
        return mounts.idmapped_mounts_supported()

    @property
    def supports_recursive_read_only(self) -> bool:
        return mounts.recursive_readonly_supported()

    @property
    def runtime_handlers(self) -> list[str]:
        """The handlers whose binaries exist (``RuntimeHandler`` names)."""
        return sorted(self._runtimes)

    # -- start and stop --------------------------------------------------------------

    async def start(self) -> None:
        """Prepare host state, reconcile records with reality (``recovery``), watch exits."""
        ensure_infra_rootfs(self._config.agent.root_dir, self._config.runtime.infra_binary)
        # Before Status answers: the advertised user_namespaces rests on it.
        no_idmap = await mounts.probe_idmapped_mounts(self._config.agent.root_dir)
        if no_idmap:
            log.warning("no user namespaces (hostUsers: false) on this node: %s", no_idmap)
        await self._network.prepare()
        await self._recovery.run()
        self._watcher.start()
        self._watcher.scan()

    async def close(self) -> None:
        """Stop watching; pods keep running. The pin dir mount goes once no pod needs it."""
        self._watcher.stop()
        await self._containers.close()
        if not any(s.netns for s in self._store.sandboxes()):
            await netns.cleanup_dir(self._network.pin_dir, release_dir=True)

    # -- events ----------------------------------------------------------------------

    def _publish(self, kind: EventKind, *, sandbox_id: str = "", container_id: str = "") -> None:
        """Snapshot the pod of the object now and hand the event to subscribers."""
        if not self._events.subscribers:
            return
        if container_id:
            container = self._store.get_container(container_id)
            sandbox_id = container.sandbox_id if container is not None else ""
        sandbox = self._store.get_sandbox(sandbox_id)
        containers = tuple(self._store.containers_of(sandbox_id)) if sandbox_id else ()
        event = ContainerEvent(
            container_id or sandbox_id, kind, time.time_ns(), sandbox, containers
        )
        self._events.publish(event)

    def subscribe_events(self) -> AsyncIterator[ContainerEvent]:
        """Every change from now on (``GetContainerEvents``); see ``events``."""
        return self._events.subscribe()

    def _on_exit(self, object_id: str) -> None:
        if self._store.get_sandbox(object_id) is not None:
            self._sandboxes.notice_exit(object_id)
        elif self._store.get_container(object_id) is not None:
            self._containers.exits.notice(object_id)

    # -- sandboxes -------------------------------------------------------------------

    async def run_sandbox(self, config: SandboxConfig) -> str:
        return await self._sandboxes.run(config)

    async def stop_sandbox(self, sandbox_id: str) -> None:
        await self._sandboxes.stop(sandbox_id)

    async def remove_sandbox(self, sandbox_id: str) -> None:
        members = [c.id for c in self._store.containers() if c.sandbox_id == sandbox_id]
        await self._sandboxes.remove(sandbox_id)
        for object_id in (sandbox_id, *members):
            self._stats.forget(object_id)  # its last CPU sample and layer size

    def sandbox_status(self, sandbox_id: str) -> SandboxRecord:
        """The sandbox, with a dead infra process noticed first."""
        return self._sandboxes.status(sandbox_id)

    def _exits_announced(self) -> bool:
        """Before a list: take the exits the watcher has queued; whether it runs (if so,
        every exit so far is recorded or announced and no list reads exit files)."""
        announced = self._watcher.drain()
        self._containers.exits.announced = announced
        return announced

    def sandbox_containers(self, sandbox_id: str) -> list[ContainerRecord]:
        self._exits_announced()
        return [
            self._containers.status(c.id, listing=True)
            for c in self._store.containers_of(sandbox_id)
        ]

    def list_sandboxes(self, selector: Selector) -> list[SandboxRecord]:
        candidates = select(self._store.sandboxes(), Selector(id_prefix=selector.id_prefix))
        if not self._exits_announced():  # an infra exit is recorded as it is announced
            candidates = [self._sandboxes.status(r.id) for r in candidates]
        return select(candidates, selector)

    def update_sandbox_resources(self, sandbox_id: str, resources: Resources) -> None:
        self._sandboxes.update_resources(sandbox_id, resources)

    def network_namespace(self, sandbox_id: str) -> str:
        return self._sandboxes.network_namespace(sandbox_id)

    async def update_pod_cidr(self, pod_cidr: str) -> None:
        await self._network.update_pod_cidr(pod_cidr)

    # -- containers ------------------------------------------------------------------

    async def create_container(self, sandbox_id: str, config: ContainerConfig) -> str:
        return await self._containers.create(sandbox_id, config)

    async def start_container(self, container_id: str) -> None:
        await self._containers.start(container_id)

    async def stop_container(self, container_id: str, timeout: float) -> None:
        await self._containers.stop(container_id, timeout)

    async def remove_container(self, container_id: str) -> None:
        await self._containers.remove(container_id)
        self._stats.forget(container_id)

    def container_status(self, container_id: str) -> ContainerRecord:
        """The container, with an exit conmon recorded (or a dead conmon) noticed first."""
        return self._containers.status(container_id)

    def container_spec(self, container_id: str) -> dict[str, Any]:
        """The OCI spec the container was created with (verbose status)."""
        return self._containers.runtime_spec(container_id)

    def list_containers(self, selector: Selector) -> list[ContainerRecord]:
        prefixes = Selector(id_prefix=selector.id_prefix, sandbox_prefix=selector.sandbox_prefix)
        candidates = select(self._store.containers(), prefixes)
        self._exits_announced()
        current = [self._containers.status(r.id, listing=True) for r in candidates]
        return select(current, selector)

    def records(self) -> tuple[list[SandboxRecord], list[ContainerRecord]]:
        """Every sandbox and container as recorded, without re-checking their processes
        (the exit watcher keeps the records current): cheap enough for every scrape."""
        return self._store.sandboxes(), self._store.containers()

    async def update_container_resources(self, container_id: str, resources: Resources) -> None:
        await self._containers.update_resources(container_id, resources)

    async def reopen_container_log(self, container_id: str) -> None:
        await self._containers.reopen_log(container_id)

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float) -> ExecOutput:
        return await self._containers.exec_sync(container_id, cmd, timeout)

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
        return await self._containers.exec_session(
            container_id, cmd, tty=tty, stdin=stdin, console_size=console_size
        )

    def attach_target(self, container_id: str) -> AttachTarget:
        return self._containers.attach_target(container_id)

    # -- stats -----------------------------------------------------------------------

    def _container_cgroup(self, record: ContainerRecord) -> str:
        sandbox = self._store.get_sandbox(record.sandbox_id)
        parent = sandbox.config.cgroup_parent if sandbox is not None else ""
        runtime = self._config.runtime
        return cgroups_path(
            runtime.cgroup_driver, parent, record.id, default_parent=runtime.default_cgroup_parent
        )

    async def container_usage(self, container_id: str) -> ContainerUsage:
        record = self._containers.status(container_id)
        return await self._stats.container(record, self._container_cgroup(record))

    async def container_usages(self, selector: Selector) -> list[ContainerUsage]:
        """Usage of the running containers ``selector`` picks."""
        records = [r for r in self.list_containers(selector) if r.state.is_running()]
        return [await self._stats.container(r, self._container_cgroup(r)) for r in records]

    async def pod_usage(self, sandbox_id: str, *, processes: bool = False) -> PodUsage:
        """The pod's usage; ``processes`` adds per-process fd and socket counts (metrics)."""
        sandbox = self._sandboxes.status(sandbox_id)
        return (await self._stats.pods([self._usage_inputs(sandbox)], processes=processes))[0]

    async def pod_usages(self, selector: Selector, *, processes: bool = False) -> list[PodUsage]:
        """Usage of the ready pods ``selector`` picks."""
        ready = [s for s in self.list_sandboxes(selector) if s.state.is_ready()]
        return await self._stats.pods([self._usage_inputs(s) for s in ready], processes=processes)

    def _usage_inputs(
        self, sandbox: SandboxRecord
    ) -> tuple[SandboxRecord, list[tuple[ContainerRecord, str]]]:
        running = [c for c in self.sandbox_containers(sandbox.id) if c.state.is_running()]
        return sandbox, [(c, self._container_cgroup(c)) for c in running]
