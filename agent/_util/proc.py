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

The fork and exec happen on a small pool of threads, not on the event loop:
``vfork`` + ``execve`` of a Go binary costs the calling thread about a
millisecond (the kernel loads the program before the parent resumes), and
``_posixsubprocess`` releases the GIL meanwhile, so the loop goes on serving
status calls while a container starts. The exit is awaited through a pidfd
on the loop itself: no waiter thread per child (asyncio's default on 3.11)
and no signal handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Literal, Self, TypeVar

from agent.errors import AgentError, DeadlineExceeded

__all__ = ["Child", "CommandFailed", "Completed", "run", "spawn", "stderr_tail"]

#: How much of a failing program's stderr goes into an error message.
_STDERR_TAIL = 2000
#: The buffer of each output pipe's reader, as asyncio's own subprocesses have.
_PIPE_LIMIT = 2**16
#: Threads that fork and exec; more than the few starts a busy node does at once.
_SPAWN_THREADS = 4
#: The exit status asyncio reports for a child something else reaped first.
_REAPED_ELSEWHERE = 255

_T = TypeVar("_T")

Stream = Literal["pipe", "null"]
_STREAMS = {"pipe": subprocess.PIPE, "null": subprocess.DEVNULL}


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

    def __init__(
        self,
        argv: tuple[str, ...],
        popen: subprocess.Popen[bytes],
        pipes: tuple[
            asyncio.StreamWriter | None, asyncio.StreamReader | None, asyncio.StreamReader | None
        ],
    ) -> None:
        self.argv = argv
        self._popen = popen
        self._stdin, self._stdout, self._stderr = pipes
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        # A pidfd names this process, never a later one that reuses its pid.
        self._pidfd: int | None = os.pidfd_open(popen.pid)
        loop.add_reader(self._pidfd, self._reap)

    @property
    def name(self) -> str:
        return os.path.basename(self.argv[0])

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self._stdin is not None, "spawned without stdin='pipe'"
        return self._stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self._stdout is not None, "spawned without stdout='pipe'"
        return self._stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        assert self._stderr is not None, "spawned without stderr='pipe'"
        return self._stderr

    def kill(self) -> None:
        """SIGKILL the program and anything it forked (it leads its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def wait(self, timeout: float | None = None) -> int:
        """Its exit status; after ``timeout`` seconds it is killed and reaped
        (``DeadlineExceeded``)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._exited), timeout)
        except TimeoutError:
            await self.kill_and_reap()
            raise DeadlineExceeded(f"{self.name} did not finish within {timeout:g}s") from None

    async def kill_and_reap(self) -> None:
        """Kill it and wait for the kernel to release it (never leaves a zombie)."""
        self.kill()
        # Shielded: a cancelled caller still reaps what it started.
        await asyncio.shield(self._exited)

    async def read_stderr(self, timeout: float = 5.0) -> str:
        """The tail of what it wrote on stderr until it closed it (or ``timeout``)."""
        if self._stderr is None:
            return ""
        with contextlib.suppress(TimeoutError):
            return stderr_tail(await asyncio.wait_for(self._stderr.read(), timeout))
        return "(no output)"

    def _reap(self) -> None:
        """The pidfd became readable: the process ended; collect its status."""
        try:
            pid, status = os.waitpid(self._popen.pid, os.WNOHANG)
        except ChildProcessError:
            code = _REAPED_ELSEWHERE
        else:
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
        self._popen.returncode = code  # so Popen never waits for it again
        assert self._pidfd is not None
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        if not self._exited.done():
            self._exited.set_result(code)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self.returncode is None:
            await self.kill_and_reap()


@functools.cache
def _spawn_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_SPAWN_THREADS, thread_name_prefix="proc-spawn")


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

    A caller cancelled while the start is under way gets its cancellation once the
    started child is killed and reaped: a spawn never leaves a process behind.
    """
    args = tuple(argv)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            stdin=_STREAMS[stdin],
            stdout=_STREAMS[stdout],
            stderr=_STREAMS[stderr],
            env=dict(env) if env is not None else None,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
        )

    child, cancelled = await _despite_cancellation(asyncio.ensure_future(_start(args, start)))
    if cancelled:
        await _despite_cancellation(asyncio.ensure_future(child.kill_and_reap()))
        raise asyncio.CancelledError
    return child


async def _start(args: tuple[str, ...], start: Callable[[], subprocess.Popen[bytes]]) -> Child:
    """Fork and exec on a spawn thread, then give the pipes to the loop."""
    loop = asyncio.get_running_loop()
    popen = await loop.run_in_executor(_spawn_threads(), start)
    transports: list[asyncio.BaseTransport] = []
    try:
        pipes = (
            await _writer(loop, popen.stdin, transports),
            await _reader(loop, popen.stdout, transports),
            await _reader(loop, popen.stderr, transports),
        )
        return Child(args, popen, pipes)
    except BaseException:
        # Not cancellable here (spawn shields it): a real failure, e.g. out of fds.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        for transport in transports:
            transport.close()  # unregisters its fd now; closing the file twice is harmless
        for pipe in (popen.stdin, popen.stdout, popen.stderr):
            if pipe is not None:
                pipe.close()
        await loop.run_in_executor(_spawn_threads(), popen.wait)
        raise


async def _despite_cancellation(future: asyncio.Future[_T]) -> tuple[_T, bool]:
    """Wait for ``future`` to finish even if the waiter is cancelled meanwhile; say
    whether it was (the caller owes its cancellation once it has cleaned up)."""
    cancelled = False
    while True:
        try:
            return await asyncio.shield(future), cancelled
        except asyncio.CancelledError:
            if future.cancelled():
                raise
            cancelled = True


async def _writer(
    loop: asyncio.AbstractEventLoop,
    pipe: IO[bytes] | None,
    transports: list[asyncio.BaseTransport],
) -> asyncio.StreamWriter | None:
    if pipe is None:
        return None
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe)
    transports.append(transport)
    return asyncio.StreamWriter(transport, protocol, None, loop)


async def _reader(
    loop: asyncio.AbstractEventLoop,
    pipe: IO[bytes] | None,
    transports: list[asyncio.BaseTransport],
) -> asyncio.StreamReader | None:
    if pipe is None:
        return None
    reader = asyncio.StreamReader(limit=_PIPE_LIMIT)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    transports.append(transport)
    return reader


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
            stdout, stderr = await asyncio.wait_for(_communicate(child, input), timeout)
        except TimeoutError:
            await child.kill_and_reap()
            raise DeadlineExceeded(f"{child.name} did not finish within {timeout:g}s") from None
    assert child.returncode is not None
    if check and child.returncode != 0:
        raise CommandFailed(child.argv, child.returncode, stdout, stderr)
    return Completed(child.argv, child.returncode, stdout, stderr)


async def _communicate(child: Child, input: bytes | None) -> tuple[bytes, bytes]:
    """Feed ``input``, read both outputs to their end, then wait for the exit."""

    async def feed() -> None:
        if input is None:
            return
        child.stdin.write(input)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await child.stdin.drain()
        child.stdin.close()

    stdout, stderr, _ = await asyncio.gather(child.stdout.read(), child.stderr.read(), feed())
    await child.wait()
    return stdout, stderr
