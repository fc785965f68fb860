"""Container lifecycle: create, start, stop, remove, exec, update, logs.

    create:  check the pod and image -> overlay rootfs -> user -> OCI spec ->
             conmon + runc create -> record (CREATED)     (each step undone on failure)
    start:   runc start -> RUNNING (an exit racing the start is applied right after)
    stop:    stop signal, wait up to the timeout, SIGKILL, wait -> EXITED
    remove:  kill if live, destroy in the runtime, unmount, delete the dirs -> gone (logs stay)

Exits arrive at any time (``exits.ExitTracker``); every transition of one
container runs under its own lock, so an exit never interleaves with a stop
or a start. The runtime is reached only through ``oci.Runtime``; the request's checks
and derived names are ``container_requests``, the rootfs and staged mounts
``container_fs``.

Size: one container's transitions and the undo steps of each read best
together; what is not a transition is out already.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any

from agent._util.fs import atomic_write_json
from agent._util.locks import KeyedLock
from agent.config import Config
from agent.errors import (
    AgentError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from agent.gpu import Assignment, ContainerEdits, GpuService, env_from_list
from agent.images import ImageConfig
from agent.oci import CreateFailed, CreateOptions, ExecFailed, ExecSession, Runtime
from agent.pods import container_requests as requests, spec
from agent.pods.apparmor import AppArmor
from agent.pods.container_fs import ContainerFilesystem, ImageSource
from agent.pods.events import EventKind
from agent.pods.exits import MONITOR_DIED, ExitTracker
from agent.pods.model import ContainerConfig, Resources
from agent.pods.mounts import Mounter
from agent.pods.oom import OomPolicy
from agent.pods.podfiles import PodDirs, pod_hostname
from agent.pods.seccomp_profiles import SeccompProfiles
from agent.pods.state import ContainerRecord, ContainerState, ExitReason, SandboxRecord, mark_exited
from agent.pods.store import PodStore
from agent.pods.users import User, resolve_user

__all__ = ["AttachTarget", "ContainerManager", "ExecOutput"]

log = logging.getLogger(__name__)

#: Prefix of a removed container's directories until they are deleted.
_TRASH = ".trash-"
#: After SIGKILL, how long to wait for conmon to report the exit.
_KILL_WAIT = 30.0
#: The exit code recorded for a container killed while its monitor was gone.
_KILLED_CODE = 137


@dataclass(frozen=True, slots=True)
class ExecOutput:
    stdout: bytes
    stderr: bytes
    exit_code: int


@dataclass(frozen=True, slots=True)
class AttachTarget:
    socket: str
    control_fifo: str
    tty: bool
    stdin: bool


def new_id() -> str:
    return secrets.token_hex(32)


def _signal_number(name: str) -> int:
    """``SIGTERM``, ``TERM``, ``15``, ``SIGRTMIN+3`` -> a signal number."""
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    if text.startswith("SIGRTMIN+"):
        return int(signal.SIGRTMIN) + int(text.split("+", 1)[1])
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise InvalidArgument(f"unknown stop signal '{name}'") from None


class ContainerManager:
    def __init__(
        self,
        config: Config,
        *,
        store: PodStore,
        images: ImageSource,
        runtimes: dict[str, Runtime],
        mounter: Mounter,
        oom: OomPolicy,
        seccomp: SeccompProfiles,
        pod_dirs: PodDirs,
        on_change: Callable[[EventKind, str], None] = lambda kind, cid: None,
        kill_wait: float = _KILL_WAIT,
        gpu: GpuService | None = None,
        apparmor: AppArmor | None = None,
        allocated: Callable[[ContainerConfig], Collection[str]] = lambda config: (),
    ) -> None:
        self._gpu = gpu
        self._allocated = allocated
        self._pod_dirs = pod_dirs
        self._kill_wait = kill_wait
        self._config = config
        self._store = store
        self._images = images
        self._runtimes = runtimes
        self._mounter = mounter
        self._oom = oom
        self._seccomp = seccomp
        self._on_change = on_change
        self._locks = KeyedLock()
        self.exits = ExitTracker(
            store=store, runtimes=runtimes, locks=self._locks, on_change=on_change
        )
        self.apparmor = apparmor or AppArmor()
        self._deletions: set[asyncio.Task[None]] = set()
        self._fs = ContainerFilesystem(
            os.path.join(config.agent.state_dir, "containers"), mounter=mounter, images=images
        )
        self.root = os.path.join(config.agent.root_dir, "containers")
        self.state = os.path.join(config.agent.state_dir, "containers")
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        os.makedirs(self.state, mode=0o711, exist_ok=True)  # traversed to the rootfs (userns)
        os.chmod(self.state, 0o711)

    # -- paths -----------------------------------------------------------------

    def bundle(self, cid: str) -> str:
        return os.path.join(self.state, cid, "bundle")

    def rootfs(self, cid: str) -> str:
        return os.path.join(self.state, cid, "rootfs")

    def _make_state_dir(self, cid: str, sandbox: SandboxRecord) -> None:
        """The container's state dir, closed to host users: the merged rootfs under it holds
        the image's setuid files and device nodes (CVE-2021-41103). A user-namespaced
        container's root must still pass through to its rootfs and staged volumes (runc
        mounts them inside the namespace): group search for its gid only."""
        path = os.path.join(self.state, cid)
        os.mkdir(path, mode=0o700)
        userns = sandbox.config.security.namespaces.userns
        if userns is not None:
            os.chown(path, 0, userns.root_gid)
            os.chmod(path, 0o710)

    def runtime_of(self, record: ContainerRecord) -> Runtime:
        return self.exits.runtime_of(record)

    # -- create ------------------------------------------------------------------

    async def create(self, sandbox_id: str, config: ContainerConfig) -> str:
        sandbox = self._store.sandbox(sandbox_id)
        if not sandbox.state.is_ready():
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        image = self._images.find(config.image)
        if image is None:
            raise NotFound(f"image '{config.image}' not found; pull it first")
        if image.is_artifact:
            raise InvalidArgument(
                f"'{config.image}' is an OCI artifact ({image.artifact_type}), not a container "
                "image: mount it as an image volume instead"
            )
        runtime = self._runtimes[sandbox.handler]
        cid = new_id()
        log_path = requests.log_path(self._pod_dirs, sandbox, config, cid)
        record = ContainerRecord(
            id=cid,
            sandbox_id=sandbox.id,
            config=config,
            image_id=image.id,
            image_ref=config.image,
            image_name=requests.image_name(config.image, image),
            state=ContainerState.CREATED,
            created_at=time.time_ns(),
            log_path=log_path,
            handler=sandbox.handler,
        )
        self._store.check_container_name(record)
        requests.check_pid_target(self._store, config, sandbox)
        requests.check_userns(config, sandbox)
        requests.check_recursive_read_only(config)
        requests.check_id_mapped_mounts(config, sandbox)
        image_ids = self._fs.image_volume_ids(config)
        # Held from the lookups above (no await since) until the record names them, so an
        # image removal racing this create sees them in use (``images.service``).
        with self._store.holding_images({image.id, *image_ids.values()}):
            config = requests.with_protective_paths(
                config, sandbox, enabled=self._config.runtime.default_masked_paths
            )
            record = replace(record, config=config)
            # Devices and profiles first: a CDI name or profile that cannot be had creates nothing.
            edits, assignment = await self._resolve_devices(config, image.config)
            apparmor = (
                None
                if config.security.privileged
                and not config.security.apparmor.startswith("localhost/")
                else await self.apparmor.profile_for(config.security.apparmor)
            )
            async with contextlib.AsyncExitStack() as undo:
                upper = os.path.join(self.root, cid, "upper")
                work = os.path.join(self.root, cid, "work")
                os.mkdir(os.path.join(self.root, cid), mode=0o700)
                undo.callback(shutil.rmtree, os.path.join(self.root, cid), True)
                os.mkdir(upper, mode=0o755)
                os.mkdir(work, mode=0o700)
                rootfs = self.rootfs(cid)
                self._make_state_dir(cid, sandbox)
                undo.callback(shutil.rmtree, os.path.join(self.state, cid), True)
                os.mkdir(rootfs, mode=0o755)
                os.mkdir(self.bundle(cid), mode=0o700)
                # Staging mounts (id-mapped layers, special volumes) go before the rootfs in the
                # undo stack, so the rootfs overlay is unmounted first.
                undo.push_async_callback(self._mounter.unmount_tree, os.path.join(self.state, cid))
                await self._fs.mount_rootfs(cid, sandbox, image, upper, work)
                undo.push_async_callback(self._mounter.unmount, rootfs)
                spec_config = await self._fs.stage_mounts(cid, sandbox, config, image_ids)
                oci, user = self._spec(cid, sandbox, spec_config, image.config, rootfs, apparmor)
                if self._gpu is not None and edits is not None:
                    self._gpu.apply(oci, edits)
                # The state dir does not outlive a reboot: no fsync on the create path.
                spec_file = os.path.join(self.bundle(cid), "config.json")
                atomic_write_json(spec_file, oci, mode=0o600, durable=False)
                os.makedirs(os.path.dirname(log_path), mode=0o755, exist_ok=True)
                self.exits.watch(cid)
                undo.callback(self.exits.forget, cid)
                options = CreateOptions(
                    log_path=log_path,
                    tty=config.tty,
                    stdin=config.stdin,
                    stdin_once=config.stdin_once,
                )
                # Before create: a failed create leaves runtime files (conmon's dirs) too.
                undo.push_async_callback(runtime.destroy, cid)
                try:
                    pid = await runtime.create(cid, self.bundle(cid), options)
                except CreateFailed as exc:
                    # The same class (so the same code): a missing command stays INVALID_ARGUMENT.
                    raise type(exc)(f"create container {config.name}: {exc}") from None
                record = replace(
                    record,
                    pid=pid,
                    uid=user.uid,
                    gid=user.gid,
                    # The spec's, after CDI edits: the groups the process really gets.
                    additional_gids=tuple(oci["process"]["user"].get("additionalGids", ())),
                    mounts=tuple(
                        (m.container_path, m.host_path, m.readonly, m.propagation)
                        for m in config.mounts
                        if not m.image
                    ),
                    image_mounts=tuple(
                        (m.container_path, m.image, image_ids[m.image], m.image_sub_path)
                        for m in config.mounts
                        if m.image
                    ),
                    # Kept when it holds nothing but was refused something: that says why.
                    gpu=json.dumps(assignment.to_dict())
                    if not assignment.empty or assignment.denied
                    else "",
                )
                self._store.add_container(record, requests.gpu_holders(record, sandbox, assignment))
                undo.pop_all()
        log.info("created container %s (%s) in pod %s", cid, config.name, sandbox.id)
        self._on_change(EventKind.CREATED, cid)
        return cid

    async def _resolve_devices(
        self, config: ContainerConfig, image: ImageConfig
    ) -> tuple[ContainerEdits | None, Assignment]:
        """CDI names, ``cdi.k8s.io/*`` annotations, NVIDIA_VISIBLE_DEVICES and CRI devices
        → the container's edits and GPU assignment (``gpu.GpuService.resolve``)."""
        if self._gpu is None:
            if config.cdi_devices:
                raise FailedPrecondition("CDI devices need the GPU service, which is off")
            return None, Assignment()
        return await asyncio.to_thread(
            self._gpu.resolve,
            cdi_devices=config.cdi_devices,
            annotations=config.annotations,
            image_env=env_from_list(image.env),
            cri_env=dict(config.envs),
            allocated=self._allocated(config),
            devices=[d.host_path for d in config.devices],
        )

    def _spec(
        self,
        cid: str,
        sandbox: SandboxRecord,
        config: ContainerConfig,
        image: ImageConfig,
        rootfs: str,
        apparmor: str | None,
    ) -> tuple[dict[str, Any], User]:
        security = config.security
        user = resolve_user(
            rootfs,
            image_user=image.user,
            run_as_user=security.run_as_user,
            run_as_username=security.run_as_username,
            run_as_group=security.run_as_group,
            supplemental_groups=security.supplemental_groups,
            strict_groups=security.supplemental_groups_policy == "Strict",
        )
        caps = spec.effective_capabilities(security.capabilities, privileged=security.privileged)
        seccomp = self._seccomp.profile(security.seccomp, caps)
        target_pid = 0
        if security.namespaces.pid == "TARGET":
            target = self._store.container(security.namespaces.target_id)
            target_pid = target.pid
        oci = spec.container_spec(
            container_id=cid,
            sandbox_id=sandbox.id,
            config=config,
            image=image,
            rootfs=rootfs,
            user=user,
            pod=self._pod_dirs.files(sandbox),
            infra_pid=sandbox.infra_pid,
            hostname=pod_hostname(sandbox.config),
            cgroups=spec.cgroups_path(
                self._config.runtime.cgroup_driver,
                sandbox.config.cgroup_parent,
                cid,
                default_parent=self._config.runtime.default_cgroup_parent,
            ),
            seccomp=seccomp,
            oom_score_adj=self._oom.clamp(config.resources.oom_score_adj),
            target_pid=target_pid,
        )
        if apparmor is not None:
            oci["process"]["apparmorProfile"] = apparmor
        pod_userns = sandbox.config.security.namespaces.userns
        if pod_userns is not None:
            spec.join_user_namespace(oci, pod_userns, sandbox.userns)
        if config.stop_signal == "" and image.stop_signal:
            oci["annotations"]["io.kubernetes.cri.stop-signal"] = image.stop_signal
        return oci, user

    # -- start ---------------------------------------------------------------------

    async def start(self, container_id: str) -> None:
        record = self._store.container(container_id)
        async with self._locks.hold(record.id):
            record = self._store.container(record.id)
            if not record.state.can_start():
                raise FailedPrecondition(
                    f"container {record.id} is {record.state.value.lower()}, not created"
                )
            sandbox = self._store.sandbox(record.sandbox_id)
            if not sandbox.state.is_ready():
                raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
            runtime = self.runtime_of(record)
            try:
                await runtime.start(record.id)
            except AgentError as exc:
                message = str(exc)
                self._store.update_container(
                    record.id,
                    lambda r: mark_exited(
                        r,
                        code=128,
                        reason=ExitReason.START_ERROR,
                        finished_at=time.time_ns(),
                        message=message,
                    ),
                )
                raise FailedPrecondition(f"start container {record.id}: {message}") from None
            self._store.update_container(
                record.id,
                lambda r: replace(r, state=ContainerState.RUNNING, started_at=time.time_ns()),
            )
            self.exits.apply(record.id)  # it may already have ended
        log.info("started container %s", record.id)
        self._on_change(EventKind.STARTED, record.id)

    # -- stop and remove -----------------------------------------------------------

    async def stop(self, container_id: str, timeout: float) -> None:
        """Stop gracefully, then kill; idempotent (an exited or unknown id is fine)."""
        try:
            record = self._store.container(container_id)
        except NotFound:
            return
        async with self._locks.hold(record.id):
            await self._stop_locked(record.id, timeout)

    async def _stop_locked(self, container_id: str, timeout: float) -> None:
        record = self._store.container(container_id)
        if self.exits.apply(record.id) or not record.state.is_live():
            return
        runtime = self.runtime_of(record)
        if record.state.is_running() and timeout > 0:
            sig = self._stop_signal(record)
            await runtime.kill(record.id, sig)
            if await self.exits.wait(record, timeout):
                return
            log.info("container %s ignored signal %d for %gs; killing it", record.id, sig, timeout)
        await runtime.kill(record.id, signal.SIGKILL, all_processes=True)
        # Without its monitor nobody writes the exit file: do not wait for one long.
        wait = self._kill_wait if runtime.monitor_alive(record.id) is not False else 2.0
        if not await self.exits.wait(record, wait):
            state = await runtime.state(record.id)
            if state is None or not state.status.has_process():
                # conmon is gone (killed from outside): nobody will write the exit file.
                self.exits.mark_lost(record.id, code=_KILLED_CODE, message=MONITOR_DIED)
                return
            raise DeadlineExceeded(f"container {record.id} did not die after SIGKILL")

    def runtime_spec(self, container_id: str) -> dict[str, Any]:
        """The OCI spec the container was created with (for verbose status)."""
        try:
            return self._bundle_spec(container_id)
        except (OSError, ValueError):
            return {}

    def _bundle_spec(self, container_id: str) -> dict[str, Any]:
        with open(os.path.join(self.bundle(container_id), "config.json")) as f:
            result: dict[str, Any] = json.load(f)
        return result

    def _stop_signal(self, record: ContainerRecord) -> int:
        if record.config.stop_signal:
            return _signal_number(record.config.stop_signal)
        try:
            annotations = self._bundle_spec(record.id).get("annotations", {})
            name = annotations.get("io.kubernetes.cri.stop-signal", "")
        except (OSError, ValueError):
            name = ""
        return _signal_number(name) if name else int(signal.SIGTERM)

    async def remove(self, container_id: str) -> None:
        """Remove the container (killing it if needed); idempotent. Its logs stay."""
        try:
            record = self._store.container(container_id)
        except NotFound:
            return
        async with self._locks.hold(record.id):
            if self._store.get_container(record.id) is None:
                return
            await self._stop_locked(record.id, 0)
            await self.runtime_of(record).destroy(record.id)
            await self.remove_files(record.id)
            self._on_change(EventKind.DELETED, record.id)  # while the record still says which pod
            self._store.remove_container(record.id)
            self.exits.forget(record.id)
        log.info("removed container %s", record.id)

    async def remove_files(self, container_id: str) -> None:
        """Unmount the rootfs and delete the container's directories (not its log).

        The directories are renamed into the trash at once (the id is free again, and
        nothing lists them) and deleted in the background: a writable layer can hold
        gigabytes, and RemoveContainer need not wait for that.
        """
        await self._mounter.unmount(self.rootfs(container_id))
        # Then what the rootfs and the volumes were made of (id-mapped layers, staged binds).
        await self._mounter.unmount_tree(os.path.join(self.state, container_id))
        for base in (self.state, self.root):
            source = os.path.join(base, container_id)
            trash = os.path.join(base, f"{_TRASH}{container_id}-{secrets.token_hex(4)}")
            try:
                os.rename(source, trash)
            except FileNotFoundError:
                continue
            self._delete_later(trash)

    def _delete_later(self, path: str) -> None:
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(shutil.rmtree, path, True))
        self._deletions.add(task)
        task.add_done_callback(self._deletions.discard)

    def empty_trash(self) -> None:
        """Delete, in the background, what earlier removals left in the trash (the agent
        stopped meanwhile): recovery does not wait for it."""
        for base in (self.state, self.root):
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(base):
                    if name.startswith(_TRASH):
                        self._delete_later(os.path.join(base, name))

    def leftover_ids(self) -> list[str]:
        """Container directories no record names (a crash inside CreateContainer)."""
        found: set[str] = set()
        for base in (self.state, self.root):
            with contextlib.suppress(FileNotFoundError):
                found.update(
                    n
                    for n in os.listdir(base)
                    if len(n) == 64 and self._store.get_container(n) is None
                )
        return sorted(found)

    # -- status, exec, update, logs ------------------------------------------------

    def status(self, container_id: str, *, listing: bool = False) -> ContainerRecord:
        """The current record. ``listing``: a list call, which checks each container's
        monitor at most once a second (an exit is still noticed at once)."""
        return self.exits.refresh(container_id, listing=listing)

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float) -> ExecOutput:
        record = self._running(container_id)
        if not cmd:
            raise InvalidArgument("cmd is required")
        process = self._bundle_spec(record.id)["process"]
        process.update(args=cmd, terminal=False)
        result = await self.runtime_of(record).exec_sync(record.id, process, timeout or None)
        if result.timed_out:
            raise DeadlineExceeded(f"command {cmd[0]!r} timed out after {timeout:g}s")
        return ExecOutput(result.stdout, result.stderr, result.exit_code)

    def _running(self, container_id: str) -> ContainerRecord:
        record = self.status(container_id)
        if not record.state.is_running():
            raise FailedPrecondition(f"container {record.id} is not running")
        return record

    async def exec_session(
        self,
        container_id: str,
        cmd: list[str],
        *,
        tty: bool,
        stdin: bool,
        console_size: tuple[int, int] | None = None,
    ) -> ExecSession:
        """Start an interactive process (``Exec``); the caller owns and closes it."""
        record = self._running(container_id)
        if not cmd:
            raise InvalidArgument("cmd is required")
        process = self._bundle_spec(record.id)["process"]
        process.update(args=cmd)
        process.pop("consoleSize", None)
        if tty and console_size is not None and all(0 < v <= 0xFFFF for v in console_size):
            process["consoleSize"] = {"width": console_size[0], "height": console_size[1]}
        try:
            return await self.runtime_of(record).exec_session(
                record.id, process, tty=tty, stdin=stdin
            )
        except ExecFailed as exc:
            # The container may have died while we were asking: say which.
            if not self.status(record.id).state.is_running():
                raise FailedPrecondition(f"container {record.id} is not running") from None
            raise AgentError(f"cannot exec {cmd[0]!r}: {exc}") from None

    def attach_target(self, container_id: str) -> AttachTarget:
        """Where the container's conmon serves its stdio (``Attach``)."""
        record = self._running(container_id)
        runtime = self.runtime_of(record)
        return AttachTarget(
            socket=runtime.attach_socket(record.id),
            control_fifo=runtime.control_fifo(record.id),
            tty=record.config.tty,
            stdin=record.config.stdin,
        )

    async def update_resources(self, container_id: str, resources: Resources) -> None:
        record = self.status(container_id)
        if not record.state.can_update():
            raise FailedPrecondition(f"container {record.id} is not running")
        async with self._locks.hold(record.id):
            clamped = replace(resources, oom_score_adj=self._oom.clamp(resources.oom_score_adj))
            await self.runtime_of(record).update(record.id, spec.resources_to_oci(clamped))
            self._store.update_container(
                record.id, lambda r: replace(r, config=replace(r.config, resources=clamped))
            )

    async def reopen_log(self, container_id: str) -> None:
        """Ask conmon to reopen the log file (after the kubelet rotated it)."""
        record = self.status(container_id)
        if not record.state.is_running():
            raise FailedPrecondition(f"container {record.id} is not running")
        await self.runtime_of(record).reopen_log(record.id, record.log_path)

    async def close(self) -> None:
        """Finish deleting removed containers' directories (they would be trash on disk)."""
        await asyncio.gather(*self._deletions, return_exceptions=True)
        await self.exits.close()
