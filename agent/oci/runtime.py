"""One OCI runtime handler (runc or crun) driven through conmon: the CRI ⇄ OCI seam.

Everything the pods package needs from a runtime, in plain values: create
(via conmon), start, kill, delete, state, update, exec. Only this module and
``conmon`` build runtime command lines. runc's "does not exist" and "not
running" answers are translated here so callers can be idempotent.
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
from dataclasses import dataclass
from typing import Any

from agent._util.proc import CommandFailed, run
from agent.errors import AgentError, DeadlineExceeded, NotFound
from agent.oci import conmon, execs

__all__ = ["CreateOptions", "ExecResult", "ExitStatus", "OciRuntime"]

_GONE = ("does not exist", "not exist", "no such file")
_NOT_RUNNING = ("not running", "process already finished", "container not running")
#: ExecSync output kept per stream (the kubelet's message size limit is 16 MiB).
MAX_EXEC_OUTPUT = 8 << 20
#: After a timed-out exec'd process is killed, how long runc gets to reap it and exit.
_EXEC_REAP_WAIT = 2.0


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


class OciRuntime:
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
        for directory in (root, self.exit_dir, self._persist_dir, self._socket_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", self.root, *args]

    def persist_dir(self, cid: str) -> str:
        return os.path.join(self._persist_dir, cid)

    def attach_socket(self, cid: str) -> str:
        return os.path.join(self._socket_dir, cid, "attach")

    async def create(self, cid: str, bundle: str, options: CreateOptions) -> int:
        """``runc create`` under a new conmon; returns the container's pid."""
        persist = self.persist_dir(cid)
        os.makedirs(persist, mode=0o700, exist_ok=True)
        argv = [
            self._conmon,
            "--api-version",
            "1",
            "-b",
            bundle,
            "-c",
            cid,
            "-u",
            cid,
            "-n",
            cid,
            "-r",
            self.binary,
            "--runtime-arg",
            f"--root={self.root}",
            "--exit-dir",
            self.exit_dir,
            "--persist-dir",
            persist,
            "-l",
            f"k8s-file:{options.log_path}",
            "--log-level",
            "error",
            "-P",
            os.path.join(bundle, "conmon.pid"),
            "-p",
            os.path.join(bundle, "pidfile"),
            "--socket-dir-path",
            self._socket_dir,
        ]
        if self._systemd:
            argv.append("--systemd-cgroup")
        if options.tty:
            argv.append("--terminal")
        if options.stdin:
            argv.append("--stdin")
            if not options.stdin_once:
                argv.append("--leave-stdin-open")
        return await conmon.spawn(conmon.ConmonSpawn(tuple(argv), bundle), timeout=self._timeout)

    async def start(self, cid: str) -> None:
        await self._run("start", cid)

    async def kill(
        self, cid: str, sig: int = signal.SIGKILL, *, all_processes: bool = False
    ) -> None:
        """Signal the container; a container that is gone or stopped is not an error."""
        args = ["kill", *(["--all"] if all_processes else []), cid, str(int(sig))]
        try:
            await self._run(*args)
        except CommandFailed as exc:
            if not _says(exc, _GONE + _NOT_RUNNING):
                raise

    async def delete(self, cid: str) -> None:
        """Forget the container in runc (killing what is left); idempotent."""
        try:
            await self._run("delete", "--force", cid)
        except CommandFailed as exc:
            if not _says(exc, _GONE):
                raise

    async def state(self, cid: str) -> dict[str, Any] | None:
        """runc's view (``status``: created/running/stopped, ``pid``), or None if unknown."""
        try:
            done = await self._run("state", cid)
        except CommandFailed as exc:
            if _says(exc, _GONE):
                return None
            raise
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    async def list_ids(self) -> list[str]:
        """Every container this runtime's state dir knows (to find orphans)."""
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
            if _says(exc, _GONE):
                raise NotFound(f"container {cid} does not exist in {self.name}") from None
            raise AgentError(f"update resources of {cid}: {exc}") from None

    async def exec_sync(
        self, cid: str, process: dict[str, Any], timeout: float | None
    ) -> ExecResult:
        """Run a process in the container to completion, capturing its output."""
        with tempfile.TemporaryDirectory(prefix="exec-", dir=self.persist_dir(cid)) as tmp:
            spec_path = os.path.join(tmp, "process.json")
            pid_path = os.path.join(tmp, "pid")
            _write_json(spec_path, process)
            proc = await asyncio.create_subprocess_exec(
                *self._argv("exec", "--process", spec_path, "--pid-file", pid_path, cid),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            assert proc.stdout is not None
            assert proc.stderr is not None
            outputs = asyncio.gather(_read_capped(proc.stdout), _read_capped(proc.stderr))
            try:
                stdout, stderr = await asyncio.wait_for(asyncio.shield(outputs), timeout)
                code = await proc.wait()
                started = _exists(pid_path)
            except TimeoutError:
                # Kill the exec'd process (inside the container) and let runc, its parent,
                # reap it: killing runc first would leave it a zombie in the container,
                # reparented to the host's init, for as long as that takes to reap it.
                if _kill_pid_file(pid_path):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), _EXEC_REAP_WAIT)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                stdout, stderr = await outputs
                await proc.wait()
                return ExecResult(-1, stdout, stderr, timed_out=True)
            except BaseException:
                _kill_pid_file(pid_path)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise
        if code != 0 and not started and _says_bytes(stderr, _GONE):
            raise NotFound(f"container {cid} does not exist in {self.name}")
        return ExecResult(code, stdout, stderr)

    async def exec_session(
        self, cid: str, process: dict[str, Any], *, tty: bool, stdin: bool
    ) -> execs.ExecSession:
        """Start an interactive process in the container under conmon (see ``oci.execs``)."""
        session_id = secrets.token_hex(8)
        directory = os.path.join(self.persist_dir(cid), f"exec-{session_id}")
        os.makedirs(directory, mode=0o700)
        spec_path = os.path.join(directory, "process.json")
        _write_json(spec_path, dict(process, terminal=tty))
        argv = [
            self._conmon,
            "--api-version",
            "1",
            "-c",
            cid,
            "-u",
            session_id,
            "-r",
            self.binary,
            "--runtime-arg",
            f"--root={self.root}",
            "-b",
            directory,
            "-p",
            os.path.join(directory, "pid"),
            "-P",
            os.path.join(directory, execs.CONMON_PIDFILE),
            "--exec",
            "--exec-process-spec",
            spec_path,
            "--exec-attach",
            "--exit-dir",
            directory,
            "-l",
            "none",
            "--log-level",
            "error",
            "--socket-dir-path",
            self._socket_dir,
        ]
        if tty:
            argv.append("--terminal")
        if stdin:
            argv.append("--stdin")
        try:
            return await execs.start_exec(
                argv,
                directory=directory,
                symlink=os.path.join(self._socket_dir, session_id),
                timeout=self._timeout,
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._socket_dir, session_id))
            raise

    async def end_exec_sessions(self) -> list[str]:
        """Kill exec'd processes whose client is gone (the agent stopped under them).

        Their conmons still run: the process is signalled while its conmon is
        alive (so the pid cannot have been reused), then the files go.
        """
        ended = []
        with contextlib.suppress(FileNotFoundError):
            for cid in os.listdir(self._persist_dir):
                base = self.persist_dir(cid)
                for name in os.listdir(base):
                    if not name.startswith("exec-"):
                        continue
                    directory = os.path.join(base, name)
                    monitor = _read_pid(os.path.join(directory, execs.CONMON_PIDFILE))
                    process = _read_pid(os.path.join(directory, "pid"))
                    if monitor and process and _alive(monitor):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(process, signal.SIGKILL)
                    if monitor:
                        await self.reap_monitor(directory)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self._socket_dir, name.removeprefix("exec-")))
                    await asyncio.to_thread(shutil.rmtree, directory, True)
                    ended.append(f"{cid}/{name}")
        return ended

    def exit_status(self, cid: str) -> ExitStatus | None:
        """What conmon recorded when the container ended, or None while it runs."""
        path = os.path.join(self.exit_dir, cid)
        try:
            with open(path) as f:
                text = f.read().strip()
            finished = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return None
        if not text.lstrip("-").isdigit():
            return None  # conmon is still writing it
        oom = os.path.exists(os.path.join(self.persist_dir(cid), "oom"))
        return ExitStatus(int(text), finished, oom)

    def conmon_pid(self, bundle: str) -> int | None:
        return _read_pid(os.path.join(bundle, "conmon.pid"))

    async def reap_monitor(self, bundle: str, timeout: float = 5.0) -> None:
        """Wait for the container's conmon to exit (it finishes just after the container);
        kill it if it lingers, so removal leaves no process behind."""
        pid = self.conmon_pid(bundle)
        if pid is None:
            return
        deadline = asyncio.get_running_loop().time() + timeout
        while _alive(pid):
            if asyncio.get_running_loop().time() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                return
            await asyncio.sleep(0.01)

    def monitor_alive(self, bundle: str) -> bool | None:
        """Is the container's conmon running? None when its pid is unknown."""
        pid = self.conmon_pid(bundle)
        return None if pid is None else _alive(pid)

    def forget(self, cid: str) -> None:
        """Drop conmon's files for a removed container."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.exit_dir, cid))
        shutil.rmtree(self.persist_dir(cid), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._socket_dir, cid))

    async def _run(self, *args: str) -> Any:
        try:
            return await run(self._argv(*args), timeout=self._timeout)
        except DeadlineExceeded:
            raise DeadlineExceeded(f"{self.name} {args[0]} did not finish in time") from None


def _says(exc: CommandFailed, phrases: tuple[str, ...]) -> bool:
    return _says_bytes(exc.stderr + exc.stdout, phrases)


def _says_bytes(data: bytes, phrases: tuple[str, ...]) -> bool:
    text = data.decode(errors="replace").lower()
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


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _kill_pid_file(path: str) -> bool:
    """SIGKILL the process whose pid ``path`` holds; whether there was one to signal."""
    try:
        with open(path) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        return False
    return True
