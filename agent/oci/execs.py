"""Interactive exec sessions: ``runc exec`` under conmon, joined over its attach socket.

conmon's exec mode (``--exec --exec-attach --api-version 1``) runs
``runc exec --detach [--tty --console-socket]`` and serves the process's
stdio on an attach socket, exactly as it does for containers. The handshake
makes sure no output is lost before we connect:

1. we start conmon with three inherited pipes (``_OCI_SYNCPIPE``,
   ``_OCI_STARTPIPE``, ``_OCI_ATTACHPIPE``) and write one start byte;
2. conmon creates the attach socket and writes ``{"data": 0}`` to the attach
   pipe; we connect to the socket;
3. we write a second start byte; only now does conmon run ``runc exec``;
4. conmon reports ``{"data": <pid>}`` on the sync pipe (or a negative value
   and runc's error), and ``{"data": <exit status>}`` when the process ends,
   after draining its output to the socket.

conmon is the process's parent (and a subreaper), so the pid stays valid
until conmon has reported the exit: killing it before then cannot hit a
reused pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal

from agent.errors import AgentError, DeadlineExceeded
from agent.oci.conmon import SyncPipe, runtime_message
from agent.oci.console import ConsoleConnection

__all__ = ["CONMON_PIDFILE", "ExecFailed", "ExecSession", "start_exec"]

_STDERR_TAIL = 2000
#: conmon's own pid, written in the session directory (``-P``).
CONMON_PIDFILE = "conmon.pid"
#: How long a killed process's conmon gets to report the exit before we stop waiting.
_KILL_WAIT = 5.0


class ExecFailed(AgentError):
    """runc could not start the process (no such executable, bad user, ...)."""


class ExecSession:
    """One running exec'd process: its console, its pid, and its exit."""

    def __init__(
        self, *, directory: str, symlink: str, console: ConsoleConnection, pid: int, sync: SyncPipe
    ) -> None:
        self.directory = directory
        self.control_fifo = os.path.join(directory, "ctl")
        self.console = console
        self.pid = pid
        self._symlink = symlink
        self._sync = sync
        self.exit_code: int | None = None
        self._exit: asyncio.Task[int] = asyncio.ensure_future(self._read_exit())

    async def _read_exit(self) -> int:
        message = await self._sync.message()
        self._sync.close()
        code = -1 if message is None else int(message.get("data", -1))
        self.exit_code = code
        return code

    async def wait(self) -> int:
        """The exit status (128+n for a signal, -1 if conmon could not tell)."""
        return await asyncio.shield(self._exit)

    def kill(self) -> None:
        if not self._exit.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def close(self) -> None:
        """Kill the process if it still runs, wait for conmon, remove the session's files."""
        self.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exit), _KILL_WAIT)
        if not self._exit.done():
            self._exit.cancel()
            self._sync.close()
        self.console.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._symlink)
        await asyncio.to_thread(shutil.rmtree, self.directory, True)


async def start_exec(
    argv: list[str], *, directory: str, symlink: str, timeout: float
) -> ExecSession:
    """Run conmon (``argv``) in ``directory``; return once the process runs."""
    pipes = {name: os.pipe() for name in ("sync", "start", "attach")}
    ours = [pipes["sync"][0], pipes["start"][1], pipes["attach"][0]]
    theirs = [pipes["sync"][1], pipes["start"][0], pipes["attach"][1]]
    for fd in ours:
        os.set_inheritable(fd, False)
    env = dict(
        os.environ,
        _OCI_SYNCPIPE=str(pipes["sync"][1]),
        _OCI_STARTPIPE=str(pipes["start"][0]),
        _OCI_ATTACHPIPE=str(pipes["attach"][1]),
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=directory,
            env=env,
            pass_fds=theirs,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except BaseException:
        for fd in ours + theirs:
            os.close(fd)
        raise
    for fd in theirs:
        os.close(fd)
    start_fd = pipes["start"][1]
    sync, attach = SyncPipe(pipes["sync"][0]), SyncPipe(pipes["attach"][0])
    console: ConsoleConnection | None = None
    try:
        os.write(start_fd, b"\0")
        async with asyncio.timeout(timeout):
            ready = await attach.message()
            if ready is None:
                raise ExecFailed(f"conmon exited before serving the exec: {await _stderr(proc)}")
            console = await ConsoleConnection.connect(os.path.join(symlink, "attach"))
            os.write(start_fd, b"\0")
            started = await sync.message()
        if started is None:
            raise ExecFailed(f"conmon exited without starting the exec: {await _stderr(proc)}")
        pid = int(started.get("data", -1))
        if pid <= 0:
            raise ExecFailed(runtime_message(str(started.get("message", "runc exec failed"))))
    except TimeoutError:
        _cleanup(console, sync, proc, directory)
        raise DeadlineExceeded(f"conmon did not start the exec within {timeout:g}s") from None
    except BaseException:
        _cleanup(console, sync, proc, directory)
        raise
    finally:
        os.close(start_fd)
        attach.close()
        # The conmon parent exits right after forking the monitor; reap it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
    return ExecSession(directory=directory, symlink=symlink, console=console, pid=pid, sync=sync)


def _cleanup(
    console: ConsoleConnection | None,
    sync: SyncPipe,
    proc: asyncio.subprocess.Process,
    directory: str,
) -> None:
    """Stop a half-started session: conmon (whose runc child dies with it) and our ends."""
    if console is not None:
        console.close()
    sync.close()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        with open(os.path.join(directory, CONMON_PIDFILE)) as f:
            os.kill(int(f.read().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


async def _stderr(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    with contextlib.suppress(TimeoutError):
        data = await asyncio.wait_for(proc.stderr.read(), 5)
        return data.decode(errors="replace").strip()[-_STDERR_TAIL:]
    return "(no output)"
