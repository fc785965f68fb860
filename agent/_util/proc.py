"""Run a helper binary (runc, conmon, CNI plugins, iptables) from asyncio.

Every call has an explicit argv and an explicit timeout, and a failure carries
the program's stderr in its message, so the error the kubelet sees says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from agent.errors import AgentError, DeadlineExceeded

__all__ = ["CommandFailed", "Completed", "run"]

#: How much of a failing program's stderr goes into an error message.
_STDERR_TAIL = 2000


@dataclass(frozen=True, slots=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes


class CommandFailed(AgentError):
    """A helper program exited non-zero; the message ends with its stderr."""

    def __init__(self, argv: tuple[str, ...], returncode: int, stdout: bytes, stderr: bytes):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr or stdout).decode(errors="replace").strip()[-_STDERR_TAIL:]
        super().__init__(f"{os.path.basename(argv[0])} exited with {returncode}: {detail}")


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the program and anything it forked (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


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
    args = tuple(argv)
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        raise DeadlineExceeded(
            f"{os.path.basename(args[0])} did not finish within {timeout:g}s"
        ) from None
    except asyncio.CancelledError:
        _kill_group(proc)
        await proc.wait()
        raise
    assert proc.returncode is not None
    if check and proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, stdout, stderr)
    return Completed(args, proc.returncode, stdout, stderr)
