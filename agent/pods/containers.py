"""Container lifecycle: create, start, stop, remove, exec, update, and exits.

    create:  check the pod and image -> overlay rootfs -> user -> OCI spec ->
             conmon + runc create -> record (CREATED)     (each step undone on failure)
    start:   runc start -> RUNNING (an exit racing the start is applied right after)
    stop:    stop signal, wait up to the timeout, SIGKILL, wait -> EXITED
    remove:  kill if live, runc delete, unmount, delete the bundle -> gone (logs stay)

Exits arrive from conmon's exit files (``oci.exits``) at any time; every
transition of one container runs under its own lock, so an exit never
interleaves with a stop or a start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable
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
from agent.images.manifest import ImageConfig
from agent.images.service import ImageManager
from agent.oci.conmon import CreateFailed
from agent.oci.execs import ExecFailed, ExecSession
from agent.oci.runtime import CreateOptions, OciRuntime
from agent.pods import mounts, spec
from agent.pods.model import ContainerConfig, Resources
from agent.pods.oom import OomPolicy
from agent.pods.podfiles import PodDirs, pod_hostname
from agent.pods.seccomp_profiles import SeccompProfiles
from agent.pods.state import ContainerRecord, ContainerState, SandboxRecord, SandboxState
from agent.pods.store import PodStore
from agent.pods.users import User, resolve_user

__all__ = ["AttachTarget", "ContainerManager", "ExecOutput"]

log = logging.getLogger(__name__)

#: After SIGKILL, how long to wait for conmon to report the exit.
_KILL_WAIT = 30.0
_REOPEN_WAIT = 5.0


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


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _alive_pid(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
        images: ImageManager,
        runtimes: dict[str, OciRuntime],
        oom: OomPolicy,
        seccomp: SeccompProfiles,
        pod_dirs: PodDirs,
        on_change: Callable[[str, str], None] = lambda kind, cid: None,
    ) -> None:
        self._pod_dirs = pod_dirs
        self._config = config
        self._store = store
        self._images = images
        self._runtimes = runtimes
        self._oom = oom
        self._seccomp = seccomp
        self._on_change = on_change
        self._locks = KeyedLock()
        self._apparmor_warned = False
        self._exited: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.root = os.path.join(config.agent.root_dir, "containers")
        self.state = os.path.join(config.agent.state_dir, "containers")
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        os.makedirs(self.state, mode=0o700, exist_ok=True)

    # -- paths -----------------------------------------------------------------

    def bundle(self, cid: str) -> str:
        return os.path.join(self.state, cid, "bundle")

    def rootfs(self, cid: str) -> str:
        return os.path.join(self.state, cid, "rootfs")

    def runtime_of(self, record: ContainerRecord) -> OciRuntime:
        runtime = self._runtimes.get(record.handler)
        if runtime is None:
            raise FailedPrecondition(f"runtime handler '{record.handler}' is not available")
        return runtime

    # -- create ------------------------------------------------------------------

    async def create(self, sandbox_id: str, config: ContainerConfig) -> str:
        sandbox = self._store.sandbox(sandbox_id)
        if sandbox.state is not SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        image = self._images.find(config.image)
        if image is None:
            raise NotFound(f"image '{config.image}' not found; pull it first")
        runtime = self._runtimes[sandbox.handler]
        log_path = self._log_path(sandbox, config)
        cid = new_id()
        record = ContainerRecord(
            id=cid,
            sandbox_id=sandbox.id,
            config=config,
            image_id=image.id,
            image_ref=config.image,
            state=ContainerState.CREATED,
            created_at=time.time_ns(),
            log_path=log_path,
            handler=sandbox.handler,
        )
        self._store.check_container_name(record)
        async with contextlib.AsyncExitStack() as undo:
            upper = os.path.join(self.root, cid, "upper")
            work = os.path.join(self.root, cid, "work")
            os.makedirs(upper, mode=0o755)
            os.makedirs(work, mode=0o700)
            undo.callback(shutil.rmtree, os.path.join(self.root, cid), True)
            rootfs = self.rootfs(cid)
            os.makedirs(rootfs, mode=0o755)
            os.makedirs(self.bundle(cid), mode=0o700)
            undo.callback(shutil.rmtree, os.path.join(self.state, cid), True)
            lowers = [
                os.path.join(self._images.snapshot_name(c), "fs") for c in reversed(image.layers)
            ]
            await mounts.mount_overlay(
                rootfs,
                lower_root=self._images.snapshots.root,
                lowers=lowers,
                upper=upper,
                work=work,
            )
            undo.push_async_callback(mounts.unmount, rootfs)
            oci, user = self._spec(cid, sandbox, config, image.config, rootfs)
            atomic_write_json(os.path.join(self.bundle(cid), "config.json"), oci, mode=0o600)
            os.makedirs(os.path.dirname(log_path), mode=0o755, exist_ok=True)
            self._exited[cid] = asyncio.Event()
            undo.callback(self._exited.pop, cid, None)
            options = CreateOptions(
                log_path=log_path, tty=config.tty, stdin=config.stdin, stdin_once=config.stdin_once
            )
            try:
                pid = await runtime.create(cid, self.bundle(cid), options)
            except CreateFailed as exc:
                raise AgentError(f"create container {config.name}: {exc}") from None
            undo.push_async_callback(self._discard_runtime, runtime, cid)
            record = replace(
                record,
                pid=pid,
                uid=user.uid,
                gid=user.gid,
                additional_gids=user.additional_gids,
                mounts=tuple(
                    (m.container_path, m.host_path, m.readonly, m.propagation)
                    for m in config.mounts
                ),
            )
            self._store.add_container(record)
            undo.pop_all()
        log.info("created container %s (%s) in pod %s", cid, config.name, sandbox.id)
        self._on_change("created", cid)
        return cid

    async def _discard_runtime(self, runtime: OciRuntime, cid: str) -> None:
        await runtime.delete(cid)
        await runtime.reap_monitor(self.bundle(cid))
        runtime.forget(cid)

    def _log_path(self, sandbox: SandboxRecord, config: ContainerConfig) -> str:
        directory = sandbox.config.log_directory
        relative = config.log_path
        if not relative:
            return os.path.join(self.state, "_logs", f"{config.name}.log")
        if os.path.isabs(relative) and not directory:
            return relative
        if os.path.isabs(relative):
            raise InvalidArgument("log_path must be relative to the sandbox's log_directory")
        full = os.path.normpath(os.path.join(directory, relative))
        if not directory or not full.startswith(os.path.normpath(directory) + "/"):
            raise InvalidArgument(f"log_path '{relative}' escapes the log directory")
        return full

    def _spec(
        self,
        cid: str,
        sandbox: SandboxRecord,
        config: ContainerConfig,
        image: ImageConfig,
        rootfs: str,
    ) -> tuple[dict[str, Any], User]:
        security = config.security
        user = resolve_user(
            rootfs,
            image_user=image.user,
            run_as_user=security.run_as_user,
            run_as_username=security.run_as_username,
            run_as_group=security.run_as_group,
            supplemental_groups=security.supplemental_groups,
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
                self._config.runtime.cgroup_driver, sandbox.config.cgroup_parent, cid
            ),
            seccomp=seccomp,
            oom_score_adj=self._oom.clamp(config.resources.oom_score_adj),
            target_pid=target_pid,
        )
        if security.apparmor and not self._apparmor_warned:
            # No AppArmor profile is loaded by the agent; the kubelet's request is noted.
            self._apparmor_warned = True
            host = "has" if os.path.isdir("/sys/kernel/security/apparmor") else "lacks"
            log.info(
                "AppArmor profile '%s' ignored (the host %s AppArmor; model-agent applies none)",
                security.apparmor,
                host,
            )
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
            if sandbox.state is not SandboxState.READY:
                raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
            runtime = self.runtime_of(record)
            try:
                await runtime.start(record.id)
            except AgentError as exc:
                message = str(exc)
                self._store.update_container(
                    record.id,
                    lambda r: replace(
                        r,
                        state=ContainerState.EXITED,
                        finished_at=time.time_ns(),
                        exit_code=128,
                        reason="StartError",
                        message=message,
                    ),
                )
                raise FailedPrecondition(f"start container {record.id}: {message}") from None
            self._store.update_container(
                record.id,
                lambda r: replace(r, state=ContainerState.RUNNING, started_at=time.time_ns()),
            )
            self._apply_exit(record.id)  # it may already have ended
        log.info("started container %s", record.id)
        self._on_change("started", record.id)

    # -- exits -------------------------------------------------------------------

    def notice_exit(self, container_id: str) -> None:
        """conmon wrote the exit file; record the exit (from the exit watcher)."""
        record = self._store.containers.get(container_id)
        if record is None or record.state is ContainerState.EXITED:
            return
        event = self._exited.get(container_id)
        if event is not None:
            event.set()  # wake a stop() waiting under the lock; it records the exit itself
        task = asyncio.get_running_loop().create_task(self._locked_exit(container_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _locked_exit(self, container_id: str) -> None:
        async with self._locks.hold(container_id):
            self._apply_exit(container_id)

    def _apply_exit(self, container_id: str) -> bool:
        """Record the exit if conmon wrote it; call with the container's lock held."""
        record = self._store.containers.get(container_id)
        if record is None or record.state is ContainerState.EXITED:
            return record is not None
        status = self.runtime_of(record).exit_status(container_id)
        if status is None:
            return False
        if status.oom_killed:
            reason = "OOMKilled"
        elif status.code == 0:
            reason = "Completed"
        else:
            reason = "Error"
        self._store.update_container(
            container_id,
            lambda r: replace(
                r,
                state=ContainerState.EXITED,
                exit_code=status.code,
                finished_at=status.finished_at,
                reason=reason,
                started_at=r.started_at or status.finished_at,
            ),
        )
        event = self._exited.get(container_id)
        if event is not None:
            event.set()
        log.info("container %s exited with %d (%s)", container_id, status.code, reason)
        self._on_change("stopped", container_id)
        return True

    async def _wait_exit(self, record: ContainerRecord, timeout: float) -> bool:
        event = self._exited.setdefault(record.id, asyncio.Event())
        deadline = time.monotonic() + timeout
        while True:
            if self._apply_exit(record.id):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, 0.5))
            event.clear()

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
        if self._apply_exit(record.id) or not record.state.is_live():
            return
        runtime = self.runtime_of(record)
        if record.state is ContainerState.RUNNING and timeout > 0:
            sig = self._stop_signal(record)
            await runtime.kill(record.id, sig)
            if await self._wait_exit(record, timeout):
                return
            log.info("container %s ignored signal %d for %gs; killing it", record.id, sig, timeout)
        await runtime.kill(record.id, signal.SIGKILL, all_processes=True)
        if not await self._wait_exit(record, _KILL_WAIT):
            state = await runtime.state(record.id)
            if state is None or state.get("status") == "stopped":
                # conmon is gone (killed from outside): nobody will write the exit file.
                self._store.update_container(
                    record.id,
                    lambda r: replace(
                        r,
                        state=ContainerState.EXITED,
                        finished_at=time.time_ns(),
                        exit_code=137,
                        reason="Error",
                        message="exit code unknown: its monitor (conmon) died",
                    ),
                )
                self._on_change("stopped", record.id)
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
            if record.id not in self._store.containers:
                return
            await self._stop_locked(record.id, 0)
            runtime = self.runtime_of(record)
            await runtime.delete(record.id)
            await runtime.reap_monitor(self.bundle(record.id))
            runtime.forget(record.id)
            await mounts.unmount(self.rootfs(record.id))
            await asyncio.to_thread(shutil.rmtree, os.path.join(self.state, record.id), True)
            await asyncio.to_thread(shutil.rmtree, os.path.join(self.root, record.id), True)
            self._on_change("deleted", record.id)  # while the record still says which pod
            self._store.remove_container(record.id)
            self._exited.pop(record.id, None)
        log.info("removed container %s", record.id)

    # -- status, exec, update, logs ------------------------------------------------

    def status(self, container_id: str) -> ContainerRecord:
        record = self._store.container(container_id)
        if record.state is not ContainerState.EXITED:
            if not self._apply_exit(record.id):
                self._check_monitor(record)
            record = self._store.container(record.id)
        return record

    def _check_monitor(self, record: ContainerRecord) -> None:
        """A container whose conmon died has nobody to report its exit: say so."""
        if record.state is not ContainerState.RUNNING:
            return
        runtime = self._runtimes.get(record.handler)
        if runtime is None or runtime.monitor_alive(self.bundle(record.id)) is not False:
            return
        if _alive_pid(record.pid):
            self._store.update_container(
                record.id,
                lambda r: replace(
                    r,
                    state=ContainerState.UNKNOWN,
                    message="its monitor (conmon) died; the process still runs",
                ),
            )
        else:
            self._store.update_container(
                record.id,
                lambda r: replace(
                    r,
                    state=ContainerState.EXITED,
                    exit_code=255,
                    reason="Error",
                    finished_at=time.time_ns(),
                    message="exit code unknown: its monitor (conmon) died",
                ),
            )
        log.warning("conmon of container %s died", record.id)
        self._on_change("stopped", record.id)

    async def reconcile(self) -> None:
        """After an agent restart: bring every record in line with what really runs."""
        for record in list(self._store.containers.values()):
            if record.state is ContainerState.EXITED or self._apply_exit(record.id):
                continue
            runtime = self._runtimes.get(record.handler)
            state = await runtime.state(record.id) if runtime is not None else None
            status = (state or {}).get("status")
            if status == "running" and record.state is ContainerState.CREATED:
                # The agent died inside StartContainer, after runc started it.
                self._store.update_container(
                    record.id,
                    lambda r: replace(r, state=ContainerState.RUNNING, started_at=time.time_ns()),
                )
            elif status in (None, "stopped"):
                self._store.update_container(
                    record.id,
                    lambda r: replace(
                        r,
                        state=ContainerState.EXITED,
                        exit_code=255,
                        reason="Error",
                        message="the container was gone when the agent started",
                        finished_at=r.finished_at or r.started_at or r.created_at,
                    ),
                )
            else:
                self._check_monitor(self._store.container(record.id))

    async def remove_orphans(self) -> list[str]:
        """Remove what a crash inside CreateContainer left: runc state, mounts, dirs."""
        orphans = []
        for base in (self.state, self.root):
            with contextlib.suppress(FileNotFoundError):
                orphans += [
                    n for n in os.listdir(base) if len(n) == 64 and n not in self._store.containers
                ]
        for cid in sorted(set(orphans)):
            for runtime in self._runtimes.values():
                await runtime.delete(cid)
                await runtime.reap_monitor(self.bundle(cid))
                runtime.forget(cid)
            await mounts.unmount(self.rootfs(cid))
            await asyncio.to_thread(shutil.rmtree, os.path.join(self.state, cid), True)
            await asyncio.to_thread(shutil.rmtree, os.path.join(self.root, cid), True)
            log.info("removed the remains of container %s (created when the agent died)", cid)
        return sorted(set(orphans))

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
        if record.state is not ContainerState.RUNNING:
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
            if self.status(record.id).state is not ContainerState.RUNNING:
                raise FailedPrecondition(f"container {record.id} is not running") from None
            raise AgentError(f"cannot exec {cmd[0]!r}: {exc}") from None

    def attach_target(self, container_id: str) -> AttachTarget:
        """Where the container's conmon serves its stdio (``Attach``)."""
        record = self._running(container_id)
        return AttachTarget(
            socket=self.runtime_of(record).attach_socket(record.id),
            control_fifo=os.path.join(self.bundle(record.id), "ctl"),
            tty=record.config.tty,
            stdin=record.config.stdin,
        )

    async def update_resources(self, container_id: str, resources: Resources) -> None:
        record = self.status(container_id)
        if record.state not in (ContainerState.CREATED, ContainerState.RUNNING):
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
        if record.state is not ContainerState.RUNNING:
            raise FailedPrecondition(f"container {record.id} is not running")
        control = os.path.join(self.bundle(record.id), "ctl")
        try:
            fd = os.open(control, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENOENT):
                raise FailedPrecondition(f"container {record.id} has no log monitor") from None
            raise
        try:
            os.write(fd, b"2 0 0\n")
        finally:
            os.close(fd)
        deadline = time.monotonic() + _REOPEN_WAIT
        while not _exists(record.log_path):
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"conmon did not reopen {record.log_path}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
