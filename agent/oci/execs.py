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

from agent._util.proc import Child, spawn
from agent.errors import AgentError, DeadlineExceeded
from agent.oci.conmon import (
    CONMON_PIDFILE,
    CONTROL_FIFO,
    ConmonCommand,
    SyncPipe,
    read_pid,
    runtime_message,
)
from agent.oci.console import ConsoleConnection

__all__ = ["ExecFailed", "ExecSession", "start_exec"]

#: How long the conmon parent gets to exit after it forked the monitor.
_PARENT_EXIT_WAIT = 10.0
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
        self.control_fifo = os.path.join(directory, CONTROL_FIFO)
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


async def start_exec(command: ConmonCommand, *, symlink: str, timeout: float) -> ExecSession:
    """Run conmon in exec mode (``command``); return once the process runs."""
    directory = command.directory
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
        child = await spawn(command.argv(), cwd=directory, env=env, pass_fds=theirs, stdout="null")
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
                raise ExecFailed(
                    f"conmon exited before serving the exec: {await child.read_stderr()}"
                )
            console = await ConsoleConnection.connect(os.path.join(symlink, "attach"))
            os.write(start_fd, b"\0")
            started = await sync.message()
        if started is None:
            raise ExecFailed(
                f"conmon exited without starting the exec: {await child.read_stderr()}"
            )
        pid = int(started.get("data", -1))
        if pid <= 0:
            raise ExecFailed(runtime_message(str(started.get("message", "runc exec failed"))))
    except TimeoutError:
        await _abandon(console, sync, child, directory)
        raise DeadlineExceeded(f"conmon did not start the exec within {timeout:g}s") from None
    except BaseException:
        await _abandon(console, sync, child, directory)
        raise
    finally:
        os.close(start_fd)
        attach.close()
    # The conmon parent exits right after forking the monitor; reap it.
    with contextlib.suppress(DeadlineExceeded):
        await child.wait(_PARENT_EXIT_WAIT)
    return ExecSession(directory=directory, symlink=symlink, console=console, pid=pid, sync=sync)


async def _abandon(
    console: ConsoleConnection | None, sync: SyncPipe, child: Child, directory: str
) -> None:
    """Stop a half-started session: conmon (whose runc child dies with it) and our ends."""
    if console is not None:
        console.close()
    sync.close()
    monitor = read_pid(os.path.join(directory, CONMON_PIDFILE))
    if monitor is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(monitor, signal.SIGKILL)
    await child.kill_and_reap()
