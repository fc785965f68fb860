"""conmon: the per-container monitor that keeps containers alive without the agent.

For each container the agent runs ``conmon``, which runs ``runc create``,
double-forks into a daemon, holds the container's stdio, writes the CRI log
file, serves the attach socket, and writes the exit code to
``<exit_dir>/<id>`` when the container ends. The agent learns the container's
pid (or runc's error) on the sync pipe, as JSON: ``{"data": <pid>}`` or
``{"data": -1, "message": "..."}`` (``--api-version 1``).

The sync pipe is passed as an inherited descriptor whose number conmon reads
from ``_OCI_SYNCPIPE``; ``_OCI_STARTPIPE`` would let a caller hold conmon
back (CRI-O moves it into a cgroup first); we release it at once. Exec
sessions add ``_OCI_ATTACHPIPE`` (see ``execs``).

This module is the only place that knows conmon's command line
(:class:`ConmonCommand`) and its files: ``conmon.pid`` and ``pidfile`` in the
monitored process's directory, ``ctl`` (the control FIFO) beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

from agent._util.proc import spawn, stderr_tail
from agent.errors import (
    AgentError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
)

__all__ = [
    "CONMON_PIDFILE",
    "CONTROL_FIFO",
    "PROCESS_PIDFILE",
    "ConmonCommand",
    "CreateFailed",
    "ExecutableMissing",
    "ExecutableNotPermitted",
    "MountFailed",
    "SyncPipe",
    "create_failure",
    "read_pid",
    "runtime_message",
    "spawn_container",
]

#: conmon's own pid (``-P``), in the bundle or exec session directory.
CONMON_PIDFILE = "conmon.pid"
#: The monitored process's pid (``-p``), written by runc.
PROCESS_PIDFILE = "pidfile"
#: conmon's control FIFO in the bundle (terminal size, log reopen).
CONTROL_FIFO = "ctl"
#: How long the conmon parent gets to exit after it forked the monitor.
_PARENT_EXIT_WAIT = 10.0


class CreateFailed(AgentError):
    """The OCI runtime refused to create the container; the message is its stderr."""


class ExecutableMissing(CreateFailed, InvalidArgument):
    """The process to run is not in the image (or not on its PATH)."""


class ExecutableNotPermitted(CreateFailed, PermissionDenied):
    """The process to run exists but may not be executed (mode, noexec, a directory)."""


class MountFailed(CreateFailed, FailedPrecondition):
    """A mount of the spec could not be made (its source, its target, its options)."""


#: runc's wording (libcontainer) for the failures a user can act on, first match wins.
_CAUSES: tuple[tuple[type[CreateFailed], tuple[str, ...], str], ...] = (
    (
        ExecutableMissing,
        ("executable file not found", "no such file or directory"),
        "the command is not in the image; check the container's command/args and the image",
    ),
    (
        ExecutableNotPermitted,
        ("permission denied",),
        "the command may not be executed (not executable, a directory, or on a noexec mount)",
    ),
    (
        MountFailed,
        ("error mounting", "mount src", "mount destination", "mountpoint"),
        "a mount of the container could not be made; check its source and target",
    ),
)


#: crun's wording (libcrun) for the same failures, as crun 1.8 says them: each names its
#: step ("executable file `x` not found in $PATH: No such file or directory", "open
#: executable: Permission denied" or "Operation not permitted" for a directory, "mount `src`
#: to `dst`: ...", "error stat'ing file `src`: ..." for a missing bind source), so none
#: needs runc's "exec:" context to be read right.
_CRUN_PHRASES: dict[type[CreateFailed], tuple[str, ...]] = {
    ExecutableMissing: ("executable file `",),
    ExecutableNotPermitted: ("open executable:",),
    MountFailed: ("mount `", "error stat'ing file `"),
}


def create_failure(message: str) -> CreateFailed:
    """The runtime's refusal (runc's or crun's) as the error that says what to fix (with the
    runtime's own words after)."""
    lowered = message.lower()
    for cls, _, advice in _CAUSES:
        if any(p in lowered for p in _CRUN_PHRASES[cls]):
            return cls(f"{advice}: {message}")
    if "exec:" in lowered or "starting container process" in lowered:
        for cls, phrases, advice in _CAUSES[:2]:
            if any(p in lowered for p in phrases):
                return cls(f"{advice}: {message}")
    cls, phrases, advice = _CAUSES[2]
    if any(p in lowered for p in phrases):
        return cls(f"{advice}: {message}")
    return CreateFailed(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConmonCommand:
    """One conmon invocation; :meth:`argv` is the only place its flags are spelled."""

    conmon: str
    runtime: str
    runtime_root: str
    #: the container's id (``-c``)
    container_id: str
    #: the monitored process's id (``-u``): the container id, or an exec session id
    session_id: str
    #: the bundle (a container) or the session directory (an exec)
    directory: str
    exit_dir: str
    socket_dir: str
    log: str  # "k8s-file:<path>" or "none"
    persist_dir: str = ""
    exec_spec: str = ""  # exec mode: the process.json to run
    systemd_cgroup: bool = False
    terminal: bool = False
    stdin: bool = False
    leave_stdin_open: bool = False

    def argv(self) -> list[str]:
        argv = [
            self.conmon,
            "--api-version",
            "1",
            "-c",
            self.container_id,
            "-u",
            self.session_id,
            "-r",
            self.runtime,
            "--runtime-arg",
            f"--root={self.runtime_root}",
            "-b",
            self.directory,
            "-p",
            os.path.join(self.directory, PROCESS_PIDFILE),
            "-P",
            os.path.join(self.directory, CONMON_PIDFILE),
            "--exit-dir",
            self.exit_dir,
            "-l",
            self.log,
            "--log-level",
            "error",
            "--socket-dir-path",
            self.socket_dir,
        ]
        if self.exec_spec:
            argv += ["--exec", "--exec-process-spec", self.exec_spec, "--exec-attach"]
        else:
            argv += ["-n", self.container_id]
        if self.persist_dir:
            argv += ["--persist-dir", self.persist_dir]
        if self.systemd_cgroup:
            argv.append("--systemd-cgroup")
        if self.terminal:
            argv.append("--terminal")
        if self.stdin:
            argv.append("--stdin")
            if self.leave_stdin_open:
                argv.append("--leave-stdin-open")
        return argv


async def spawn_container(command: ConmonCommand, *, timeout: float) -> int:
    """Run conmon for a container; return the pid it reports once ``runc create`` is done."""
    sync_read, sync_write = os.pipe()
    start_read, start_write = os.pipe()
    for fd in (sync_read, start_write):
        os.set_inheritable(fd, False)
    env = dict(os.environ, _OCI_SYNCPIPE=str(sync_write), _OCI_STARTPIPE=str(start_read))
    try:
        child = await spawn(
            command.argv(),
            cwd=command.directory,
            env=env,
            pass_fds=(sync_write, start_read),
            stdout="null",
        )
    except BaseException:
        for fd in (sync_read, sync_write, start_read, start_write):
            os.close(fd)
        raise
    os.close(sync_write)
    os.close(start_read)
    os.write(start_write, b"\0")
    os.close(start_write)
    sync = SyncPipe(sync_read)
    stderr = ""
    async with child:
        try:
            message = await asyncio.wait_for(sync.message(), timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"conmon did not report the container within {timeout:g}s"
            ) from None
        finally:
            sync.close()
        # The conmon parent exits right after forking the monitor; reap it.
        stderr = await child.read_stderr(_PARENT_EXIT_WAIT)
        with contextlib.suppress(DeadlineExceeded):
            await child.wait(_PARENT_EXIT_WAIT)
    if message is None:
        raise CreateFailed(f"conmon exited without reporting the container: {stderr}")
    pid = int(message.get("data", message.get("pid", -1)))
    if pid < 0:
        raise create_failure(runtime_message(str(message.get("message", "unknown error"))))
    return pid


class SyncPipe:
    """The reading end of a pipe conmon writes JSON lines to (it owns the fd).

    ``message()`` is the next line, parsed; None at EOF. A line that is not
    JSON reads as a failure (``data -1``) whose message is the line.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._reader: asyncio.StreamReader | None = None
        self._transport: asyncio.BaseTransport | None = None

    async def message(self) -> dict[str, Any] | None:
        if self._reader is None:
            loop = asyncio.get_running_loop()
            self._reader = asyncio.StreamReader()
            self._transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(self._reader),  # type: ignore[arg-type]
                os.fdopen(self._fd, "rb", buffering=0),
            )
        line = await self._reader.readline()
        if not line.strip():
            return None
        try:
            value = json.loads(line)
        except ValueError:
            return {"data": -1, "message": line.decode(errors="replace")}
        return value if isinstance(value, dict) else None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        else:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def runtime_message(raw: str) -> str:
    """runc's error, without its log-format noise (``time=... level=error msg="..."``)."""
    text = raw.strip()
    marker = 'msg="'
    if marker in text:
        text = text[text.rindex(marker) + len(marker) :].rstrip('"')
    return stderr_tail(text.replace('\\"', '"').encode())


def read_pid(path: str) -> int | None:
    """The pid a pid file holds, or None (missing, empty, garbage)."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
