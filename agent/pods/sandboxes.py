"""Pod sandbox lifecycle: run, stop, remove, status, and infra exits.

    run:     record (reserves the name) -> pod dirs -> netns + CNI ADD (unless host
             network) -> pod files -> /dev/shm -> infra ``catatonit -P`` via conmon +
             runc -> READY.  Any failure undoes every step done so far.
    stop:    kill its containers -> kill the infra -> CNI DEL, remove the netns ->
             unmount /dev/shm -> NOTREADY.  Idempotent.
    remove:  stop -> remove its containers -> runc delete the infra -> delete the
             dirs and the record.  Idempotent.

A sandbox whose infra process dies (killed, OOM) becomes NOTREADY; the
kubelet then stops and recreates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import replace

from agent._util.fs import atomic_write_json
from agent._util.locks import KeyedLock
from agent.config import Config
from agent.errors import AgentError, FailedPrecondition, InvalidArgument, NotFound
from agent.oci import CreateFailed, CreateOptions, Runtime
from agent.pods import spec
from agent.pods.containers import ContainerManager
from agent.pods.events import EventKind
from agent.pods.model import Resources, SandboxConfig
from agent.pods.mounts import Mounter, why_no_idmapped_mounts
from agent.pods.oom import OomPolicy
from agent.pods.podfiles import PodDirs, pod_hostname
from agent.pods.podnet import PodNetwork
from agent.pods.seccomp_profiles import SeccompProfiles
from agent.pods.state import SandboxRecord, SandboxState
from agent.pods.store import PodStore
from agent.pods.userns import UsernsPins

__all__ = ["SandboxManager"]

log = logging.getLogger(__name__)

_SHM_SIZE = "64m"
_INFRA_EXIT_WAIT = 10.0


class SandboxManager:
    def __init__(
        self,
        config: Config,
        *,
        store: PodStore,
        containers: ContainerManager,
        runtimes: dict[str, Runtime],
        mounter: Mounter,
        pod_dirs: PodDirs,
        network: PodNetwork,
        oom: OomPolicy,
        seccomp: SeccompProfiles,
        infra_rootfs: str,
        userns: UsernsPins | None = None,
        on_change: Callable[[EventKind, str], None] = lambda kind, sid: None,
    ) -> None:
        self._config = config
        self._mounter = mounter
        self._store = store
        self._containers = containers
        self._runtimes = runtimes
        self._dirs = pod_dirs
        self.network = network
        self._oom = oom
        self._seccomp = seccomp
        self._infra_rootfs = infra_rootfs
        self._userns = userns or UsernsPins(os.path.join(config.agent.state_dir, "userns"))
        self._on_change = on_change
        self._locks = KeyedLock()
        self._stopping: set[str] = set()

    def runtime(self, handler: str) -> Runtime:
        runtime = self._runtimes.get(handler)
        if runtime is None:
            known = ", ".join(sorted(self._runtimes)) or "none"
            raise InvalidArgument(f"runtime handler '{handler}' is not available (have {known})")
        return runtime

    # -- run -----------------------------------------------------------------------

    async def run(self, config: SandboxConfig) -> str:
        handler = config.runtime_handler or self._config.runtime.default_handler
        runtime = self.runtime(handler)
        sandbox_id = secrets.token_hex(32)
        record = SandboxRecord(
            id=sandbox_id,
            config=config,
            state=SandboxState.CREATING,
            created_at=time.time_ns(),
            handler=handler,
            cgroup_path=spec.cgroups_path(
                self._config.runtime.cgroup_driver,
                config.cgroup_parent,
                sandbox_id,
                default_parent=self._config.runtime.default_cgroup_parent,
            ),
        )
        userns = config.security.namespaces.userns
        self._check_userns(config)
        # Before anything is made: a profile the pod cannot have refuses it.
        apparmor = await self._infra_apparmor(config)
        self._store.add_sandbox(record)  # reserves the name, or ALREADY_EXISTS
        async with self._locks.hold(sandbox_id), contextlib.AsyncExitStack() as undo:
            undo.callback(self._store.remove_sandbox, sandbox_id)
            self._dirs.create(sandbox_id)
            undo.callback(self._dirs.delete, sandbox_id)
            userns_pin = ""
            if userns is not None:
                # First: the pod's network namespace is made inside it.
                userns_pin = await self._userns.create(sandbox_id, userns)
                undo.callback(self._userns.remove, sandbox_id)
                record = self._store.update_sandbox(
                    sandbox_id, lambda r: replace(r, userns=userns_pin)
                )
            if config.security.namespaces.network != "NODE":

                def prepared(netns_path: str, network_conf: str) -> None:
                    # Recorded before CNI ADD: a crash during ADD is undone at restart.
                    self._store.update_sandbox(
                        sandbox_id,
                        lambda r: replace(r, netns=netns_path, network_conf=network_conf),
                    )

                attachment = await self.network.attach(
                    sandbox_id, config, prepared, userns=userns_pin
                )
                undo.push_async_callback(
                    self.network.detach,
                    sandbox_id,
                    config,
                    netns_path=attachment.netns,
                    network_conf=attachment.network_conf,
                    result=attachment.result,
                )
                record = self._store.update_sandbox(
                    sandbox_id,
                    lambda r: replace(
                        r,
                        netns=attachment.netns,
                        ips=attachment.ips,
                        cni_result=attachment.result,
                        network_conf=attachment.network_conf,
                    ),
                )
            self._dirs.write_files(sandbox_id, config, list(record.ips))
            if config.security.namespaces.ipc != "NODE":
                await self._mounter.tmpfs(self._dirs.shm(sandbox_id), size=_SHM_SIZE, mode="1777")
                undo.push_async_callback(self._mounter.unmount, self._dirs.shm(sandbox_id))
                if userns is not None:  # the pod's root owns it, as in containerd
                    os.chown(self._dirs.shm(sandbox_id), userns.root_uid, userns.root_gid)
            pid = await self._start_infra(record, runtime, undo, apparmor)
            self._store.update_sandbox(
                sandbox_id,
                lambda r: replace(r, state=SandboxState.READY, infra_pid=pid, message=""),
            )
            undo.pop_all()
        log.info(
            "pod sandbox %s (%s/%s) ready%s",
            sandbox_id,
            config.metadata.namespace,
            config.metadata.name,
            f" at {', '.join(record.ips)}" if record.ips else "",
        )
        self._on_change(EventKind.STARTED, sandbox_id)
        return sandbox_id

    def remove_stale_userns(self) -> list[str]:
        """Unpin user namespaces no sandbox record names (recovery)."""
        keep = {s.id for s in self._store.sandboxes() if s.userns}
        stale = self._userns.leftovers(keep)
        for name in stale:
            self._userns.remove(name)
        return stale

    @staticmethod
    def _check_userns(config: SandboxConfig) -> None:
        """A user-namespaced pod shares no namespace with the host (as the kubelet requires)."""
        ns = config.security.namespaces
        if ns.userns is None:
            return
        shared = [name for name in ("network", "pid", "ipc") if getattr(ns, name) == "NODE"]
        if shared:
            raise InvalidArgument(
                f"a pod in a user namespace cannot use the host's {', '.join(shared)} namespace"
            )
        no_idmap = why_no_idmapped_mounts()
        if no_idmap:
            raise FailedPrecondition(f"user namespaces need id-mapped mounts: {no_idmap}")

    async def _infra_apparmor(self, config: SandboxConfig) -> str | None:
        """The pod's AppArmor profile for its infra process (``pods.apparmor``: a named
        one on a host without AppArmor is refused); privileged pods run unconfined
        unless they name one, as containers do."""
        request = config.security.apparmor
        if config.security.privileged and not request.startswith("localhost/"):
            return None
        return await self._containers.apparmor.profile_for(request)

    async def _start_infra(
        self,
        record: SandboxRecord,
        runtime: Runtime,
        undo: contextlib.AsyncExitStack,
        apparmor: str | None,
    ) -> int:
        config = record.config
        security = config.security
        caps: list[str] = []
        oci = spec.infra_spec(
            sandbox_id=record.id,
            rootfs=self._infra_rootfs,
            hostname=pod_hostname(config),
            namespaces=security.namespaces,
            pod=self._dirs.files(record),
            cgroups=record.cgroup_path,
            sysctls=config.sysctls,
            seccomp=self._seccomp.profile(security.seccomp, caps),
            oom_score_adj=self._oom.clamp(-998),
            privileged=security.privileged,
            run_as_user=security.run_as_user,
        )
        if apparmor is not None:
            oci["process"]["apparmorProfile"] = apparmor
        if security.namespaces.userns is not None:
            spec.join_user_namespace(oci, security.namespaces.userns, record.userns)
        bundle = self._dirs.bundle(record.id)
        atomic_write_json(os.path.join(bundle, "config.json"), oci, mode=0o600, durable=False)
        log_path = os.path.join(self._dirs.volatile(record.id), "infra.log")
        # Before create: a failed create leaves runtime files (conmon's dirs) too.
        undo.push_async_callback(runtime.destroy, record.id)
        try:
            pid = await runtime.create(record.id, bundle, CreateOptions(log_path=log_path))
        except CreateFailed as exc:
            raise AgentError(f"start the pod's infra process: {exc}") from None
        await runtime.start(record.id)
        return pid

    # -- stop and remove -------------------------------------------------------------

    async def stop(self, sandbox_id: str) -> None:
        try:
            record = self._store.sandbox(sandbox_id)
        except NotFound:
            return  # api.proto: StopPodSandbox is idempotent
        async with self._locks.hold(record.id):
            await self._stop_locked(record.id)

    async def _stop_locked(self, sandbox_id: str) -> None:
        self._stopping.add(sandbox_id)
        try:
            await self._stop_steps(sandbox_id)
        finally:
            self._stopping.discard(sandbox_id)

    async def _stop_steps(self, sandbox_id: str) -> None:
        record = self._store.sandbox(sandbox_id)
        for container in self._store.containers_of(record.id):
            await self._containers.stop(container.id, 0)
        runtime = self._runtimes.get(record.handler)
        if runtime is not None:
            await runtime.kill(record.id, signal.SIGKILL, all_processes=True)
            await self._wait_infra_exit(runtime, record.id)
        if record.netns or record.network_conf:
            await self.network.detach(
                record.id,
                record.config,
                netns_path=record.netns,
                network_conf=record.network_conf,
                result=record.cni_result,
            )
        await self._mounter.unmount(self._dirs.shm(record.id))
        if record.userns:
            self._userns.remove(record.id)
        was_ready = record.state.is_ready()
        self._store.update_sandbox(
            record.id,
            lambda r: replace(
                r,
                state=SandboxState.NOTREADY,
                netns="",
                network_conf="",
                cni_result="",
                ips=(),
                userns="",
                message=r.message or "stopped",
            ),
        )
        if was_ready:
            log.info("pod sandbox %s stopped", record.id)
            self._on_change(EventKind.STOPPED, record.id)

    async def _wait_infra_exit(self, runtime: Runtime, sandbox_id: str) -> None:
        deadline = time.monotonic() + _INFRA_EXIT_WAIT
        while runtime.exit_status(sandbox_id) is None:
            state = await runtime.state(sandbox_id)
            if state is None or not state.status.has_process():
                return
            if time.monotonic() > deadline:
                log.warning("infra of pod %s did not exit after SIGKILL", sandbox_id)
                return
            await asyncio.sleep(0.05)

    async def remove(self, sandbox_id: str) -> None:
        try:
            record = self._store.sandbox(sandbox_id)
        except NotFound:
            return  # api.proto: RemovePodSandbox is idempotent
        async with self._locks.hold(record.id):
            if self._store.get_sandbox(record.id) is None:
                return
            await self._stop_locked(record.id)
            for container in self._store.containers_of(record.id):
                await self._containers.remove(container.id)
            runtime = self._runtimes.get(record.handler)
            if runtime is not None:
                await runtime.destroy(record.id)
            await asyncio.to_thread(self._dirs.delete, record.id)
            self._on_change(EventKind.DELETED, record.id)
            self._store.remove_sandbox(record.id)
        log.info("pod sandbox %s removed", record.id)

    # -- status and updates ---------------------------------------------------------------

    def notice_exit(self, sandbox_id: str) -> None:
        """The infra process ended: the pod is no longer ready."""
        record = self._store.get_sandbox(sandbox_id)
        if record is None or not record.state.is_ready():
            return
        if sandbox_id in self._stopping:
            return  # our own stop killed it; stop records the state
        self._store.update_sandbox(
            sandbox_id,
            lambda r: replace(
                r, state=SandboxState.NOTREADY, message="the pod's infra process exited"
            ),
        )
        log.warning("infra process of pod %s exited; the pod is not ready", sandbox_id)
        self._on_change(EventKind.STOPPED, sandbox_id)

    def status(self, sandbox_id: str) -> SandboxRecord:
        record = self._store.sandbox(sandbox_id)
        runtime = self._runtimes.get(record.handler)
        if (
            record.state.is_ready()
            and runtime is not None
            and runtime.exit_status(record.id) is not None
        ):
            self.notice_exit(record.id)
            record = self._store.sandbox(record.id)
        return record

    def network_namespace(self, sandbox_id: str) -> str:
        """The ready pod's network namespace path ("" for a host-network pod), for port-forward."""
        record = self.status(sandbox_id)
        if not record.state.is_ready():
            raise FailedPrecondition(f"pod sandbox {record.id} is not ready")
        return record.netns

    def update_resources(self, sandbox_id: str, resources: Resources) -> None:
        record = self._store.sandbox(sandbox_id)
        self._store.update_sandbox(
            record.id, lambda r: replace(r, config=replace(r.config, resources=resources))
        )
