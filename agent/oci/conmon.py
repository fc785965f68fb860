"""conmon: the per-container monitor that keeps containers alive without the agent.

For each container the agent runs ``conmon``, which runs ``runc create``,
double-forks into a daemon, holds the container's stdio, writes the CRI log
file, serves the attach socket, and writes the exit code to
``<exit_dir>/<id>`` when the container ends. The agent learns the container's
pid (or runc's error) on the sync pipe, as JSON: ``{"data": <pid>}`` or
``{"data": -1, "message": "..."}`` (``--api-version 1``).

The sync pipe is passed as an inherited descriptor whose number conmon reads
from ``_OCI_SYNCPIPE``; ``_OCI_STARTPIPE`` would let a caller hold conmon
back (CRI-O moves it into a cgroup first); we release it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError, DeadlineExceeded

__all__ = ["ConmonSpawn", "CreateFailed", "SyncPipe", "runtime_message", "spawn"]

_STDERR_TAIL = 2000


class CreateFailed(AgentError):
    """The OCI runtime refused to create the container; the message is its stderr."""


@dataclass(frozen=True, slots=True)
class ConmonSpawn:
    argv: tuple[str, ...]
    cwd: str


async def spawn(command: ConmonSpawn, *, timeout: float) -> int:
    """Run conmon; return the container pid it reports once ``runc create`` is done."""
    sync_read, sync_write = os.pipe()
    start_read, start_write = os.pipe()
    for fd in (sync_read, start_write):
        os.set_inheritable(fd, False)
    env = dict(os.environ, _OCI_SYNCPIPE=str(sync_write), _OCI_STARTPIPE=str(start_read))
    try:
        proc = await asyncio.create_subprocess_exec(
            *command.argv,
            cwd=command.cwd,
            env=env,
            pass_fds=(sync_write, start_read),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except BaseException:
        for fd in (sync_read, sync_write, start_read, start_write):
            os.close(fd)
        raise
    os.close(sync_write)
    os.close(start_read)
    os.write(start_write, b"\0")
    os.close(start_write)
    stderr = b""
    sync = SyncPipe(sync_read)
    try:
        message = await asyncio.wait_for(sync.message(), timeout)
    except TimeoutError:
        raise DeadlineExceeded(f"conmon did not report the container within {timeout:g}s") from None
    finally:
        sync.close()
        # The conmon parent exits right after forking the monitor; reap it.
        with contextlib.suppress(TimeoutError):
            stderr = await asyncio.wait_for(_drain(proc), 10)
    if message is None:
        detail = stderr.decode(errors="replace").strip()[-_STDERR_TAIL:]
        raise CreateFailed(f"conmon exited without reporting the container: {detail}")
    pid = int(message.get("data", message.get("pid", -1)))
    if pid < 0:
        raise CreateFailed(runtime_message(str(message.get("message", "unknown error"))))
    return pid


async def _drain(proc: asyncio.subprocess.Process) -> bytes:
    assert proc.stderr is not None
    data = await proc.stderr.read()
    await proc.wait()
    return data


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
    return text.replace('\\"', '"')[-_STDERR_TAIL:]
