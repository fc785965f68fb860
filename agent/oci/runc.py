"""The conmon + runc (or crun) implementation of ``oci.Runtime``.

Only this module and ``conmon`` build runtime command lines. runc's answers
are translated here: "not running" means there is nothing to signal; a
failed kill, delete or update means the container is gone (so stop and
remove can be idempotent) only once ``state`` says so. runc's stderr alone
cannot tell: crun's "No such file or directory" names a cgroup file just as
it names its own state file, and the kubelet reads ``NOT_FOUND`` as the
container having disappeared. A failed ``runc exec`` is an exec failure
(exit 126/127 with runc's message on stderr), never "the container is gone".

Files per container, all under the state dir:

    <state>/exits/<id>                conmon's exit file (the exit code)
    <state>/conmon/<id>/              conmon's persist dir (``oom`` marker) and
                        bundle ->     a link to the bundle (pid files, ``ctl``)
                        exec-<sid>/   one interactive exec session
    <state>/attach/<id>  -> …         conmon's attach socket dir (a link)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from typing import Any

from agent._util.proc import CommandFailed, run, spawn
from agent.errors import AgentError, DeadlineExceeded, FailedPrecondition, NotFound
from agent.oci import conmon, console, execs
from agent.oci.conmon import CONMON_PIDFILE, CONTROL_FIFO, PROCESS_PIDFILE, ConmonCommand
from agent.oci.protocol import CreateOptions, ExecResult, ExitStatus, RuncState, RuncStatus

__all__ = ["MAX_EXEC_OUTPUT", "ConmonRuntime"]

#: runc's ErrNotExist; crun says "error opening file `<root>/<id>/status`: No such file or
#: directory", which reads as gone only while the state dir is missing (see ``state``).
_DOES_NOT_EXIST = ("does not exist",)
_NO_SUCH_FILE = ("no such file",)
_NOT_RUNNING = ("not running", "process already finished", "container not running")
#: ExecSync output kept per stream (the kubelet's message size limit is 16 MiB).
MAX_EXEC_OUTPUT = 8 << 20
#: After a timed-out exec'd process is killed, how long runc gets to reap it and exit.
_EXEC_REAP_WAIT = 2.0
#: How long conmon gets to reopen the log after being asked.
_REOPEN_WAIT = 5.0
#: The exit code of an exec whose command could not be started (as a shell says).
_EXEC_NOT_FOUND = 127
_EXEC_NOT_EXECUTABLE = 126


class ConmonRuntime:
    """One runtime handler: ``binary`` (runc or crun) driven through ``conmon``."""

    def __init__(
        self,
        *,
        name: str,
        binary: str,
        root: str,
        conmon_binary: str,
        state_dir: str,
        systemd_cgroup: bool = False,
        timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.binary = binary
        self.root = root
        self._conmon = conmon_binary
        self.exit_dir = os.path.join(state_dir, "exits")
        self._persist_dir = os.path.join(state_dir, "conmon")
        self._socket_dir = os.path.join(state_dir, "attach")
        self._systemd = systemd_cgroup
        self._timeout = timeout
        self._monitor_pids: dict[str, int] = {}
        for directory in (root, self.exit_dir, self._persist_dir, self._socket_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)

    # -- files -------------------------------------------------------------------

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", self.root, *args]

    def _persist(self, cid: str) -> str:
        return os.path.join(self._persist_dir, cid)

    def _bundle(self, cid: str) -> str:
        """The bundle ``create`` was given (recorded as a link in the persist dir)."""
        return os.path.join(self._persist(cid), "bundle")

    def attach_socket(self, cid: str) -> str:
        return os.path.join(self._socket_dir, cid, "attach")

    def control_fifo(self, cid: str) -> str:
        return os.path.join(self._bundle(cid), CONTROL_FIFO)

    def _command(self, cid: str, session: str, directory: str, **extra: Any) -> ConmonCommand:
        extra.setdefault("exit_dir", self.exit_dir)
        return ConmonCommand(
            conmon=self._conmon,
            runtime=self.binary,
            runtime_root=self.root,
            container_id=cid,
            session_id=session,
            directory=directory,
            socket_dir=self._socket_dir,
            systemd_cgroup=self._systemd,
            **extra,
        )

    # -- lifecycle ---------------------------------------------------------------

    async def create(self, cid: str, bundle: str, options: CreateOptions) -> int:
        """``runc create`` under a new conmon; returns the container's pid."""
        persist = self._persist(cid)
        os.makedirs(persist, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._bundle(cid))
        os.symlink(bundle, self._bundle(cid))
        self._monitor_pids.pop(cid, None)
        command = self._command(
            cid,
            cid,
            bundle,
            persist_dir=persist,
            log=f"k8s-file:{options.log_path}",
            terminal=options.tty,
            stdin=options.stdin,
            leave_stdin_open=options.stdin and not options.stdin_once,
        )
        return await conmon.spawn_container(command, timeout=self._timeout)

    async def start(self, cid: str) -> None:
        await self._run("start", cid)

    async def kill(
        self, cid: str, sig: int = signal.SIGKILL, *, all_processes: bool = False
    ) -> None:
        args = ["kill", *(["--all"] if all_processes else []), cid, str(int(sig))]
        try:
            await self._run(*args)
        except CommandFailed as exc:
            if not _says(exc, _NOT_RUNNING) and not await self._confirmed_gone(
                cid, or_stopped=True
            ):
                raise

    async def _delete(self, cid: str) -> None:
        try:
            await self._run("delete", "--force", cid)
        except CommandFailed:
            if not await self._confirmed_gone(cid):
                raise

    async def _confirmed_gone(self, cid: str, *, or_stopped: bool = False) -> bool:
        """Whether ``state`` confirms ``cid`` is gone (or, ``or_stopped``, has no process
        left to signal) after another verb failed; a failing ``state`` is no answer."""
        try:
            state = await self.state(cid)
        except AgentError:
            return False
        return state is None or (or_stopped and state.status is RuncStatus.STOPPED)

    async def destroy(self, cid: str) -> None:
        await self._delete(cid)
        await self.wait_monitor(cid)
        self._forget(cid)

    def _forget(self, cid: str) -> None:
        self._monitor_pids.pop(cid, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.exit_dir, cid))
        shutil.rmtree(self._persist(cid), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._socket_dir, cid))

    async def state(self, cid: str) -> RuncState | None:
        """The runtime's state of ``cid``; None when it has no such container."""
        try:
            done = await self._run("state", cid)
        except CommandFailed as exc:
            if _says(exc, _DOES_NOT_EXIST) or (
                _says(exc, _NO_SUCH_FILE) and not _exists(os.path.join(self.root, cid))
            ):
                return None
            raise
        raw = json.loads(done.stdout)
        try:
            status = RuncStatus(str(raw.get("status", "")))
        except ValueError:
            raise AgentError(
                f"{self.name} state {cid}: unknown status {raw.get('status')!r}"
            ) from None
        return RuncState(status=status, pid=int(raw.get("pid") or 0))

    async def list_ids(self) -> list[str]:
        try:
            done = await self._run("list", "--quiet")
        except CommandFailed:
            return []
        return [line for line in done.stdout.decode().split() if line]

    async def update(self, cid: str, resources: dict[str, Any]) -> None:
        try:
            await run(
                self._argv("update", "--resources", "-", cid),
                input=json.dumps(resources).encode(),
                timeout=self._timeout,
            )
        except CommandFailed as exc:
            if await self._confirmed_gone(cid):
                raise NotFound(f"container {cid} does not exist in {self.name}") from None
            message = conmon.runtime_message((exc.stderr or exc.stdout).decode(errors="replace"))
            raise AgentError(f"{self.name} update resources of {cid}: {message}") from None

    # -- exits and the monitor -------------------------------------------------------

    def exit_status(self, cid: str) -> ExitStatus | None:
        path = os.path.join(self.exit_dir, cid)
        try:
            # stat first: asked for every live container on every list, and a failed
            # stat is half the cost of a failed open.
            finished = os.stat(path).st_mtime_ns
            with open(path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return None
        if not text.lstrip("-").isdigit():
            return None  # conmon is still writing it
        oom = os.path.exists(os.path.join(self._persist(cid), "oom"))
        return ExitStatus(int(text), finished, oom)

    def _monitor_pid(self, cid: str) -> int | None:
        """conmon's pid (written once at create; cached, as status calls ask often)."""
        pid = self._monitor_pids.get(cid)
        if pid is None:
            pid = conmon.read_pid(os.path.join(self._bundle(cid), CONMON_PIDFILE))
            if pid is not None:
                self._monitor_pids[cid] = pid
        return pid

    def monitor_alive(self, cid: str) -> bool | None:
        pid = self._monitor_pid(cid)
        return None if pid is None else _alive(pid)

    async def wait_monitor(self, cid: str, timeout: float = 5.0) -> None:
        await _wait_gone(self._monitor_pid(cid), timeout)

    async def reopen_log(self, cid: str, log_path: str) -> None:
        if not console.request_log_reopen(self.control_fifo(cid)):
            raise FailedPrecondition(f"container {cid} has no log monitor")
        deadline = time.monotonic() + _REOPEN_WAIT
        while not _exists(log_path):
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"conmon did not reopen {log_path}")
            await asyncio.sleep(0.02)

    # -- exec ------------------------------------------------------------------------

    async def exec_sync(
        self, cid: str, process: dict[str, Any], timeout: float | None
    ) -> ExecResult:
        """Run a process in the container to completion, capturing its output.

        runc's own failure to start the process (no such executable, not
        executable, bad cwd) is answered as a shell would: exit code 127 or
        126 with runc's message on stderr; the container is untouched.
        """
        with tempfile.TemporaryDirectory(prefix="exec-", dir=self._persist(cid)) as tmp:
            spec_path = os.path.join(tmp, "process.json")
            pid_path = os.path.join(tmp, "pid")
            _write_json(spec_path, process)
            child = await spawn(
                self._argv("exec", "--process", spec_path, "--pid-file", pid_path, cid)
            )
            async with child:
                outputs = asyncio.gather(_read_capped(child.stdout), _read_capped(child.stderr))
                try:
                    stdout, stderr = await asyncio.wait_for(asyncio.shield(outputs), timeout)
                except TimeoutError:
                    # Kill the exec'd process (inside the container) and let runc, its
                    # parent, reap it: killing runc first would leave it a zombie in the
                    # container, reparented to the host's init, until that reaps it.
                    if _kill_pid_file(pid_path):
                        with contextlib.suppress(DeadlineExceeded):
                            await child.wait(_EXEC_REAP_WAIT)
                    await child.kill_and_reap()
                    stdout, stderr = await outputs
                    return ExecResult(-1, stdout, stderr, timed_out=True)
                except BaseException:
                    _kill_pid_file(pid_path)
                    raise
                code = await child.wait()
                started = _exists(pid_path)
        if code != 0 and not started:
            return await self._exec_not_started(cid, stdout, stderr)
        return ExecResult(code, stdout, stderr)

    async def _exec_not_started(self, cid: str, stdout: bytes, stderr: bytes) -> ExecResult:
        """runc exec failed before the process ran: ask runc whether the container still runs."""
        message = conmon.runtime_message(stderr.decode(errors="replace"))
        state = await self.state(cid)
        if state is None or not state.is_running():
            raise FailedPrecondition(f"container {cid} is not running")
        return ExecResult(_exec_failure_code(message), stdout, (message + "\n").encode())

    async def exec_session(
        self, cid: str, process: dict[str, Any], *, tty: bool, stdin: bool
    ) -> execs.ExecSession:
        """Start an interactive process in the container under conmon (see ``oci.execs``)."""
        session_id = secrets.token_hex(8)
        directory = os.path.join(self._persist(cid), f"exec-{session_id}")
        os.makedirs(directory, mode=0o700)
        spec_path = os.path.join(directory, "process.json")
        _write_json(spec_path, dict(process, terminal=tty))
        # The session's exit goes to its own directory: in the container's exit dir
        # it would read as the container's exit.
        command = self._command(
            cid,
            session_id,
            directory,
            exit_dir=directory,
            log="none",
            exec_spec=spec_path,
            terminal=tty,
            stdin=stdin,
        )
        symlink = os.path.join(self._socket_dir, session_id)
        try:
            return await execs.start_exec(command, symlink=symlink, timeout=self._timeout)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(symlink)
            raise

    async def end_exec_sessions(self) -> list[str]:
        """Kill exec'd processes whose client is gone (the agent stopped under them).

        Their conmons still run: the process is signalled while its conmon is
        alive (so the pid cannot have been reused), then the files go.
        """
        ended = []
        with contextlib.suppress(FileNotFoundError):
            for cid in os.listdir(self._persist_dir):
                base = self._persist(cid)
                for name in os.listdir(base):
                    if not name.startswith("exec-"):
                        continue
                    directory = os.path.join(base, name)
                    monitor = conmon.read_pid(os.path.join(directory, CONMON_PIDFILE))
                    process = conmon.read_pid(os.path.join(directory, PROCESS_PIDFILE))
                    if monitor and process and _alive(monitor):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(process, signal.SIGKILL)
                    await _wait_gone(monitor, 5.0)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self._socket_dir, name.removeprefix("exec-")))
                    await asyncio.to_thread(shutil.rmtree, directory, True)
                    ended.append(f"{cid}/{name}")
        return ended

    async def _run(self, *args: str) -> Any:
        try:
            return await run(self._argv(*args), timeout=self._timeout)
        except DeadlineExceeded:
            raise DeadlineExceeded(f"{self.name} {args[0]} did not finish in time") from None


def _exec_failure_code(message: str) -> int:
    """The exit code a shell gives a command the runtime could not start: 126 when it may
    not be executed (runc and crun: "permission denied"; crun for a directory: "operation
    not permitted"), else 127 (not found, or a bad working directory)."""
    lowered = message.lower()
    if "permission denied" in lowered or "operation not permitted" in lowered:
        return _EXEC_NOT_EXECUTABLE
    return _EXEC_NOT_FOUND


def _says(exc: CommandFailed, phrases: tuple[str, ...]) -> bool:
    text = (exc.stderr + exc.stdout).decode(errors="replace").lower()
    return any(p in text for p in phrases)


async def _read_capped(stream: asyncio.StreamReader) -> bytes:
    """Read to EOF, keeping at most MAX_EXEC_OUTPUT bytes (the rest is drained)."""
    kept = bytearray()
    while chunk := await stream.read(1 << 16):
        if len(kept) < MAX_EXEC_OUTPUT:
            kept += chunk[: MAX_EXEC_OUTPUT - len(kept)]
    return bytes(kept)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _wait_gone(pid: int | None, timeout: float) -> None:
    """Wait for a monitor (not our child) to exit; SIGKILL it if it lingers."""
    if pid is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _alive(pid):
        if loop.time() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        await asyncio.sleep(0.01)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


def _kill_pid_file(path: str) -> bool:
    """SIGKILL the process whose pid ``path`` holds; whether there was one to signal."""
    pid = conmon.read_pid(path)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return False
    return True
