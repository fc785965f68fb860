"""Run a helper binary (runc, conmon, CNI plugins, iptables, unpack workers) from asyncio.

The one way the agent starts a process. Two shapes:

* :func:`run` — run to completion and collect the output (runc verbs, CNI
  plugins, iptables);
* :func:`spawn` — start a child the caller talks to while it runs (conmon with
  inherited sync pipes, ``runc exec`` with streamed output, an unpack worker fed
  on stdin). The :class:`Child` handle owns it: ``async with`` kills the
  process group and reaps it when the block fails or is cancelled.

Every call has an explicit argv and an explicit timeout; the child leads its
own session so a kill reaches anything it forked; a failure carries the tail
of the program's stderr in its message, so the error the kubelet sees says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from agent.errors import AgentError, DeadlineExceeded

__all__ = ["Child", "CommandFailed", "Completed", "run", "spawn", "stderr_tail"]

#: How much of a failing program's stderr goes into an error message.
_STDERR_TAIL = 2000

Stream = Literal["pipe", "null"]
_STREAMS = {"pipe": asyncio.subprocess.PIPE, "null": asyncio.subprocess.DEVNULL}


@dataclass(frozen=True, slots=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes


def stderr_tail(data: bytes) -> str:
    """The end of a program's output, decoded, for an error message."""
    return data.decode(errors="replace").strip()[-_STDERR_TAIL:]


class CommandFailed(AgentError):
    """A helper program exited non-zero; the message ends with its stderr."""

    def __init__(self, argv: tuple[str, ...], returncode: int, stdout: bytes, stderr: bytes):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = stderr_tail(stderr or stdout)
        super().__init__(f"{os.path.basename(argv[0])} exited with {returncode}: {detail}")


class Child:
    """A started helper process: its pid, its pipes, and a sure way to stop it."""

    def __init__(self, argv: tuple[str, ...], proc: asyncio.subprocess.Process) -> None:
        self.argv = argv
        self._proc = proc

    @property
    def name(self) -> str:
        return os.path.basename(self.argv[0])

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self._proc.stdin is not None, "spawned without stdin='pipe'"
        return self._proc.stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self._proc.stdout is not None, "spawned without stdout='pipe'"
        return self._proc.stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        assert self._proc.stderr is not None, "spawned without stderr='pipe'"
        return self._proc.stderr

    def kill(self) -> None:
        """SIGKILL the program and anything it forked (it leads its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    async def wait(self, timeout: float | None = None) -> int:
        """Its exit status; after ``timeout`` seconds it is killed and reaped
        (``DeadlineExceeded``)."""
        try:
            return await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            await self.kill_and_reap()
            raise DeadlineExceeded(f"{self.name} did not finish within {timeout:g}s") from None

    async def kill_and_reap(self) -> None:
        """Kill it and wait for the kernel to release it (never leaves a zombie)."""
        self.kill()
        # Shielded: a cancelled caller still reaps what it started.
        await asyncio.shield(self._proc.wait())

    async def read_stderr(self, timeout: float = 5.0) -> str:
        """The tail of what it wrote on stderr until it closed it (or ``timeout``)."""
        if self._proc.stderr is None:
            return ""
        with contextlib.suppress(TimeoutError):
            return stderr_tail(await asyncio.wait_for(self._proc.stderr.read(), timeout))
        return "(no output)"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self._proc.returncode is None:
            await self.kill_and_reap()


async def spawn(
    argv: list[str] | tuple[str, ...],
    *,
    stdin: Stream = "null",
    stdout: Stream = "pipe",
    stderr: Stream = "pipe",
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    pass_fds: Collection[int] = (),
) -> Child:
    """Start ``argv`` in its own session; the caller owns the returned :class:`Child`.

    Example::

        async with await spawn(["conmon", ...], pass_fds=(sync_w,)) as child:
            ...  # any exception or cancellation here kills and reaps conmon
            await child.wait(timeout=10)
    """
    args = tuple(argv)
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=_STREAMS[stdin],
        stdout=_STREAMS[stdout],
        stderr=_STREAMS[stderr],
        env=dict(env) if env is not None else None,
        cwd=cwd,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
    )
    return Child(args, proc)


async def run(
    argv: list[str] | tuple[str, ...],
    *,
    timeout: float,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    check: bool = True,
) -> Completed:
    """Run ``argv`` to completion; kill it (and fail) after ``timeout`` seconds."""
    child = await spawn(argv, stdin="pipe" if input is not None else "null", env=env, cwd=cwd)
    async with child:
        try:
            stdout, stderr = await asyncio.wait_for(child._proc.communicate(input), timeout)
        except TimeoutError:
            await child.kill_and_reap()
            raise DeadlineExceeded(f"{child.name} did not finish within {timeout:g}s") from None
    assert child.returncode is not None
    if check and child.returncode != 0:
        raise CommandFailed(child.argv, child.returncode, stdout, stderr)
    return Completed(child.argv, child.returncode, stdout, stderr)
